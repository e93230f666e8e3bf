"""naive_peer.py: the peer for `make bench`: FastAPI, pydantic and one Redis round trip per bid.

What a team writing its own pacer builds first: a pydantic request model, and one redis-py (asyncio) round trip
per bid (an atomic Lua check of spend against budget).

    NAIVE_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn loadtest.naive_peer:app --loop uvloop --http httptools

Budgets live in Redis as hashes `naive:{<bidder_id>}` with fields `budget` and `spent` (micros); the bench writes
them. A granted bid is charged at once (no reservations, no pacing): the simplest thing that never overspends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import redis.asyncio as aioredis
from fastapi import FastAPI
from pydantic import BaseModel, Field

PREFIX = "naive"
REDIS_URL = os.environ.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
# Grant the bid if it fits in what is left of the budget, and charge it; -1 for an unknown bidder.
CHECK = """
local budget = redis.call('HGET', KEYS[1], 'budget')
if not budget then return -1 end
local bid = tonumber(ARGV[1])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
if spent + bid > tonumber(budget) then return 0 end
redis.call('HINCRBY', KEYS[1], 'spent', bid)
return bid
"""


class BidRequest(BaseModel):
    bidder_id: str = Field(min_length=1, max_length=256)
    auction_id: str = Field(min_length=1, max_length=256)
    bid_micros: int = Field(ge=1, le=10**12)


class Decision(BaseModel):
    auction_id: str
    bid: bool
    bid_micros: int | None = None
    reason: Literal["exhausted", "unknown_bidder"] | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    client = aioredis.Redis.from_url(REDIS_URL)
    app.state.check = client.register_script(CHECK)
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(title="naive pacer", lifespan=lifespan)


@app.post("/v1/bid", response_model=Decision, response_model_exclude_none=True)
async def bid(request: BidRequest) -> Decision:
    granted = int(await app.state.check(keys=[f"{PREFIX}:{{{request.bidder_id}}}"], args=[request.bid_micros]))
    if granted > 0:
        return Decision(auction_id=request.auction_id, bid=True, bid_micros=granted)
    reason: Literal["exhausted", "unknown_bidder"] = "unknown_bidder" if granted < 0 else "exhausted"
    return Decision(auction_id=request.auction_id, bid=False, reason=reason)
