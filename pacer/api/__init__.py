"""HTTP layer: the bidder hot path (raw ASGI + msgspec) and the operator API (FastAPI)."""
