"""run.py: the real engine in virtual time over an auction log.

The same Engine, Ledger, curves and control law as the service, driven by a ManualClock: every auction is a
decide() at its timestamp, a granted bid at or above the competing bid wins, and the win (or, if the exchange
sends them, the loss) reaches the engine after a delay, as notices do in production. Ticks run every `tick_s`
of virtual time. Baseline strategies plug their control law into the same engine, so every row of a
comparison differs only in the law.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from pacer.auctionlog import LOSS, WIN, AuctionLogWriter
from pacer.bidder_config import BidderConfig, BidderIn  # the operator API's own schema
from pacer.clock import ManualClock
from pacer.controller import ControlLaw, Controller
from pacer.curves import TrafficCurve
from pacer.engine import Engine, EngineParams
from pacer.periods import PeriodError, parse_period
from pacer.replay.auctions import AuctionLog
from pacer.replay.baselines import BASELINES
from pacer.store import ModelRecord

STRATEGIES = ("pacer", *BASELINES)
LOG_BATCH = 500_000  # rows per auction-log write during a replay


class BiddersError(ValueError):
    """A bidders file that cannot be used; names the bidder and field."""


@dataclass(frozen=True)
class ReplayOptions:
    strategy: str = "pacer"
    auction: str = "second"  # second: a win pays the competing bid; first: it pays the granted bid
    win_delay_s: float = 1.0  # mean delay of a win notice (exponential); 0 = at once
    loss_notices: bool = False  # most exchanges send none: lost bids stay reserved until their TTL
    tick_s: float = 1.0
    sample_s: float = 60.0  # how often the pacing signals are recorded
    seed: int = 0
    params: EngineParams | None = None  # e.g. the service's TTL bounds; default: EngineParams(tick_s=tick_s)
    models: dict[str, dict[str, object]] | None = None  # fitted models (pacer.model/1) by bidder, as published
    log: AuctionLogWriter | None = None  # write decisions and outcomes here, in the service's auction-log format


@dataclass
class ReplayResult:
    log: AuctionLog
    configs: dict[str, BidderConfig]
    options: ReplayOptions
    engine: Engine
    granted: npt.NDArray[np.int64]  # per auction: the bid the engine granted (0 = no bid)
    price: npt.NDArray[np.int64]  # per auction: what the win cost (0 = not won)
    won: npt.NDArray[np.bool_]
    sample_t: npt.NDArray[np.float64]  # when the signals were recorded
    throttle: npt.NDArray[np.float64]  # (samples, bidders in log order)
    multiplier: npt.NDArray[np.float64]


def load_bidders(path: Path) -> dict[str, BidderConfig]:
    """BIDDERS.json: {"<bidder_id>": <the body of PUT /v1/bidders/{id}>, ...}, validated as the API does."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BiddersError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(doc, dict) or not doc:
        raise BiddersError(f'{path}: a JSON object {{"<bidder_id>": {{"budget_micros": ...}}, ...}} expected')
    configs: dict[str, BidderConfig] = {}
    for bidder_id, body in doc.items():
        try:
            parsed = BidderIn.model_validate(body)
            period = parse_period(parsed.period.model_dump())
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function", "tagged")))
            raise BiddersError(f"{path}: {bidder_id}.{where}: {err['msg']}") from None
        except PeriodError as exc:
            raise BiddersError(f"{path}: {bidder_id}.{exc.field}: {exc.message}") from None
        configs[bidder_id] = BidderConfig(parsed.budget_micros, period, parsed.pacing, parsed.max_bid_micros)
    return configs


def make_law(strategy: str, params: EngineParams) -> ControlLaw:
    if strategy == "pacer":
        return Controller(params.control)
    if strategy not in BASELINES:
        raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    return BASELINES[strategy](params.control)


def replay(
    log: AuctionLog, configs: dict[str, BidderConfig], curve: TrafficCurve, options: ReplayOptions | None = None
) -> ReplayResult:
    """Run the log through the engine. Deterministic for (log, configs, curve, options)."""
    opt = options or ReplayOptions()
    if opt.auction not in ("first", "second"):
        raise ValueError(f"auction: {opt.auction!r} is not first or second")
    missing = sorted(set(log.bidders) - set(configs))
    if missing:
        raise BiddersError(f"the log has auctions for bidder(s) with no configuration: {', '.join(missing[:5])}")
    params = opt.params or EngineParams(tick_s=opt.tick_s)
    rng = np.random.default_rng(opt.seed)
    start = float(log.ts[0]) if len(log) else 0.0
    clock = ManualClock(start)
    engine = Engine(clock, params, curve, rng=random.Random(opt.seed), controller=make_law(opt.strategy, params))
    for bidder_id, doc in (opt.models or {}).items():
        engine.apply_model(ModelRecord(bidder_id, 1, doc, {"ok": True}, 1))
    for bidder_id in log.bidders:
        engine.configure(bidder_id, configs[bidder_id])
    out = opt.log

    n = len(log)
    ts, bidder, aid = log.ts.tolist(), log.bidder.tolist(), log.auction_id.tolist()
    bid, market = log.bid.tolist(), log.market.tolist()
    names = log.bidders
    delays = (rng.exponential(opt.win_delay_s, n) if opt.win_delay_s > 0 else np.zeros(n)).tolist()
    granted = [0] * n
    price = [0] * n
    won = [False] * n
    first_price = opt.auction == "first"
    notices: list[tuple[float, int, int]] = []  # (due, auction index, price or -1 for a loss)
    samples: list[float] = []
    throttles: list[list[float]] = []
    multipliers: list[list[float]] = []
    slots = [engine.bidders[name] for name in names]
    next_tick, next_sample = start, start

    def advance(until: float) -> None:
        nonlocal next_tick, next_sample
        while True:
            due = notices[0][0] if notices else math.inf
            if due <= until and due <= next_tick:
                clock.now, j, paid = heapq.heappop(notices)
                if paid >= 0:
                    engine.win(names[bidder[j]], aid[j], paid)
                else:
                    engine.loss(names[bidder[j]], aid[j])
                if out is not None:
                    out.outcome(
                        clock.now, WIN if paid >= 0 else LOSS, names[bidder[j]], aid[j], paid if paid >= 0 else None
                    )
            elif next_tick <= until:
                clock.now = next_tick
                engine.tick()
                if next_tick >= next_sample:
                    samples.append(next_tick)
                    throttles.append([b.throttle for b in slots])
                    multipliers.append([b.multiplier for b in slots])
                    next_sample += opt.sample_s
                next_tick += opt.tick_s
            else:
                return

    decide = engine.decide
    for i in range(n):
        t = ts[i]
        advance(t)
        clock.now = t
        g, reason = decide(names[bidder[i]], aid[i], bid[i])
        if out is not None:
            out.decision(t, names[bidder[i]], aid[i], bid[i], g, reason or None)
            if out.pending >= LOG_BATCH:
                out.flush()
        if not g:
            continue
        granted[i] = g
        m = market[i]
        if g >= m:
            paid = g if first_price else m
            price[i] = paid
            won[i] = True
            heapq.heappush(notices, (t + delays[i], i, paid))
        elif opt.loss_notices:
            heapq.heappush(notices, (t + delays[i], i, -1))
    # Drain: every notice arrives, and the engine ticks on to the end of the last period it paces.
    ends = [min(b.ends_at, b.window.end) for b in slots]
    advance(max([*ends, *(d for d, _, _ in notices)], default=start))
    if out is not None and not out.flush():
        raise OSError(f"auction log: cannot write to {out.url}: {out.last_error}")
    return ReplayResult(
        log=log,
        configs=configs,
        options=opt,
        engine=engine,
        granted=np.array(granted, dtype=np.int64),
        price=np.array(price, dtype=np.int64),
        won=np.array(won, dtype=np.bool_),
        sample_t=np.array(samples),
        throttle=np.array(throttles).reshape(len(samples), len(names)),
        multiplier=np.array(multipliers).reshape(len(samples), len(names)),
    )
