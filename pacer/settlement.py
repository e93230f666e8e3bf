"""settlement.py: the use case behind POST /v1/events: make the wins durable (the store deduplicates them), then
settle wins and losses in memory, and log every outcome. No HTTP here: api/bidder.py decodes and encodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacer.auctionlog import LOSS, WIN, AuctionLogWriter
from pacer.engine import Engine
from pacer.store import Store, WinRecord


@dataclass(frozen=True, slots=True)
class Outcome:
    """One win (price_micros set) or loss notice, as the exchange reported it."""

    bidder_id: str
    auction_id: str
    price_micros: int | None = None  # None: a loss


async def settle(engine: Engine, store: Store, outcomes: list[Outcome], log: AuctionLogWriter | None = None) -> int:
    """Record the wins (raises StoreError, having changed nothing, when the store cannot), then charge the new ones,
    settle duplicates and losses, and log all. Returns how many wins were duplicates."""
    now = engine.clock()
    wins = [o for o in outcomes if o.price_micros is not None]
    records = [
        WinRecord(w.bidder_id, w.auction_id, w.price_micros or 0, engine.period_key(w.bidder_id), now) for w in wins
    ]
    new = await store.record_wins(records) if records else []
    duplicates = 0
    for w, is_new in zip(wins, new, strict=True):
        if is_new:
            engine.win(w.bidder_id, w.auction_id, w.price_micros or 0)
        else:
            engine.duplicate(w.bidder_id, w.auction_id)
            duplicates += 1
    for o in outcomes:
        if o.price_micros is None:
            engine.loss(o.bidder_id, o.auction_id)
    if log is not None:  # every outcome, duplicates too: the rollup counts an auction once
        for o in outcomes:
            if o.price_micros is None:
                log.outcome(now, LOSS, o.bidder_id, o.auction_id)
            else:
                log.outcome(now, WIN, o.bidder_id, o.auction_id, o.price_micros)
    return duplicates
