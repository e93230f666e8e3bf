"""pacer: real-time budget pacing for ad bidding."""

__version__ = "0.1.0"
