"""engine.py: per-bidder decisions and settlement, and the tick that re-plans every bidder.

No I/O: everything here runs on the bid hot path or in the tick. Time comes from an injected clock so the
service (wall clock) and replay (virtual clock) run the same code. Durability and win dedupe belong to the
store: `win()` is called only for wins the store has durably recorded as new.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pacer.bidder_config import (
    BUDGET_UNKNOWN,
    EXHAUSTED,
    NO_BUDGET,
    NOT_ACTIVE,
    PACED,
    PAUSED,
    REASONS,
    STATES,
    UNKNOWN_BIDDER,
    BidderConfig,
    State,
)
from pacer.clock import Clock
from pacer.controller import ControlLaw, Controller, ControlParams, TickInputs
from pacer.curves import MODES, CurveTable, TrafficCurve, progress
from pacer.fitted import FittedModel
from pacer.ledger import Ledger
from pacer.periods import Daily, Flight, Window, utc_offset, window_at
from pacer.store import ModelRecord

F64 = npt.NDArray[np.float64]
TICK_CHUNK = 1000
# The tick's columns, one row per slot (Engine._cols): what the controller reads. A row is re-gathered only when
# its bidder changed (Engine._dirty); the rest is vectorised over all rows.
(
    BUDGET,
    SPENT,
    RESERVED,
    HOLDBACK,
    START,
    END,
    TZ,
    W_START,
    W_END,
    SETTLED,
    UNMATCHED,
    WINS,
    SEEN,
    CURVE_ROW,
    ENDS_AT,
    OCCUPIED,
    PAUSED_FLAG,
    LOST_FLAG,
    DAILY,
    MODE,
) = range(20)
NCOLS = 20
_IDLE = np.zeros(NCOLS)  # a free slot: not occupied, so never active
# An expired grant is remembered (to time a late win on it) for this many TTLs: at tens of thousands of bids a
# second without loss notices, remembering them for PACER_TTL_MAX_S held millions of entries.
EXPIRED_KEPT_TTLS = 3.0


@dataclass(frozen=True, slots=True)
class EngineParams:
    tick_s: float = 0.1
    ttl_initial_s: float = 10.0  # reservation TTL before any win-notice delay has been observed
    ttl_min_s: float = 1.0
    ttl_max_s: float = 300.0
    ttl_quantile: float = 0.99  # TTL = this quantile of observed win-notice delays...
    ttl_factor: float = 1.5  # ...times this safety factor, within [ttl_min_s, ttl_max_s]
    control: ControlParams = field(default_factory=ControlParams)


class DelayTracker:
    """Win-notice delays seen lately; the reservation TTL is a high quantile of them.

    Exchanges that never send loss notices leave every lost bid reserved until it expires, so a fixed long TTL
    would lock most of a small budget in dead reservations; a TTL that follows observed delays does not.
    """

    SIZE = 2048
    REFRESH_EVERY = 32

    def __init__(self, params: EngineParams) -> None:
        self._params = params
        self._delays = np.zeros(self.SIZE)
        self._count = 0
        self._refreshed = 0
        self.ttl = params.ttl_initial_s

    def observe(self, delay: float) -> None:
        self._delays[self._count % self.SIZE] = max(delay, 0.0)
        self._count += 1

    @property
    def mean(self) -> float:
        """Mean recent win-notice delay (s): how long spend stays in flight after a grant."""
        return float(self._delays[: min(self._count, self.SIZE)].mean()) if self._count else 0.0

    def refresh(self) -> float:
        """Recompute the TTL when the delays seen have doubled, then every REFRESH_EVERY new ones (a quantile per
        tick would be the tick's main cost for a small fleet)."""
        p = self._params
        new = self._count - self._refreshed
        if new and (new >= self.REFRESH_EVERY or self._count >= 2 * self._refreshed):
            self._refreshed = self._count
            seen = self._delays[: min(self._count, self.SIZE)]
            q = float(np.quantile(seen, p.ttl_quantile))
            self.ttl = min(max(q * p.ttl_factor, p.ttl_min_s), p.ttl_max_s)
        return self.ttl


@dataclass(frozen=True, slots=True)
class Totals:
    """What /metrics shows of all bidders together (Engine.totals)."""

    budget: int
    spent: int
    reserved: int
    states: dict[str, int]
    fitted: int


class Bidder:
    """One bidder's live state. Its throttle and bid multiplier live in the engine's lists, by slot."""

    __slots__ = (
        "_multipliers",
        "_throttles",
        "bidder_id",
        "config",
        "curve_row",
        "ends_at",
        "ledger",
        "lost",
        "mode",
        "model",
        "seen",
        "settled_spent",
        "short",
        "slot",
        "unmatched_spent",
        "weights",
        "window",
        "wins",
    )

    def __init__(
        self,
        bidder_id: str,
        config: BidderConfig,
        window: Window,
        slot: int,
        spent: int,
        leased: bool,
        signals: tuple[list[float], list[float]],
    ) -> None:
        self._throttles, self._multipliers = signals  # the engine's lists, by slot (shared, updated in place)
        self.bidder_id = bidder_id
        self.slot = slot
        # Leased (fleet): nothing may be committed until the first sync grants a lease.
        self.ledger = Ledger(config.budget_micros, spent, spent if leased else None)
        # The shared store lost this bidder's state: nothing is granted until an operator restores it.
        self.lost = False
        self.short = 0  # micros of bids refused for want of lease since the last sync (fleet.py reads it)
        self.settled_spent = 0  # tallies since the last tick, read and zeroed by the tick
        self.unmatched_spent = 0
        self.wins = 0
        self.seen = 0  # auctions asked about since the last tick (the feed-forward's traffic level)
        self.model: FittedModel | None = None
        self.curve_row = 0  # its row in the engine's CurveTable (0: the prior)
        self.config = config
        self.mode = MODES[config.pacing]
        self.window = window
        self.ends_at = window.end if isinstance(config.period, Flight) else math.inf
        self.weights = (0.0, 0.0)

    @property
    def timezone(self) -> str:
        return self.config.period.timezone

    @property
    def throttle(self) -> float:
        """The probability of taking part in an auction, as the last tick set it."""
        return self._throttles[self.slot]

    @throttle.setter
    def throttle(self, value: float) -> None:
        self._throttles[self.slot] = value

    @property
    def multiplier(self) -> float:
        """The share of the requested bid that is granted, as the last tick set it."""
        return self._multipliers[self.slot]

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self._multipliers[self.slot] = value

    def state(self, now: float) -> State:
        if self.lost:
            return "store_lost"
        if self.config.paused:
            return "paused"
        if now < self.window.start:
            return "scheduled"
        if now >= self.ends_at:
            return "ended"
        if self.ledger.spent >= self.ledger.budget:
            return "exhausted"
        return "active"


class Engine:
    """All bidders of this instance, in memory."""

    def __init__(
        self,
        clock: Clock,
        params: EngineParams | None = None,
        curve: TrafficCurve | None = None,
        rng: random.Random | None = None,
        controller: ControlLaw | None = None,
        leased: bool = False,
    ) -> None:
        self.clock = clock
        self.leased = leased  # a fleet instance: each ledger spends only its lease (see fleet.py)
        self.params = params or EngineParams()
        self.curves = CurveTable(curve or TrafficCurve.flat())
        # Published models by bidder, also for bidders not configured here (yet): applied when they are.
        self.models: dict[str, FittedModel | None] = {}
        self.model_seq = 0  # the store's publication seq read up to
        self.fits: dict[str, dict[str, object]] = {}  # the last fit attempt per bidder (status pages)
        # The control law is pluggable only so replay can run published baselines through this same engine.
        self.controller = controller or Controller(self.params.control)
        self.delays = DelayTracker(self.params)
        self._random = (rng or random.Random()).random
        self.bidders: dict[str, Bidder] = {}
        self.ids: list[str] = []  # the bidder ids, sorted: pages of GET /v1/bidders in O(log n + page)
        self._slots: list[Bidder | None] = []
        self._free: list[int] = []
        # Slots given to a new bidder while a stepped tick is under way: the row gathered for them belongs
        # to whoever had the slot before, so this tick leaves them alone.
        self._fresh: set[int] = set()
        self._dirty: set[int] = set()  # slots whose row in _cols is out of date (traffic, settlement, config)
        self._expiring: set[int] = set()  # slots whose ledger holds something that can expire
        self._cols = np.zeros((0, NCOLS))
        self._tz: dict[str, int] = {}  # time zone -> its index in the TZ column
        # The controller's outputs the hot path reads, by slot: plain lists (a float from a list is ~3x faster
        # than from a numpy array), refilled in place after each tick.
        self._throttle: list[float] = []
        self._multiplier: list[float] = []
        self._last_tick = clock()
        # Counters for /metrics; plain ints so the hot path pays one dict/attr increment.
        self.decisions: dict[str, int] = dict.fromkeys(("bid", *REASONS), 0)
        self.wins = 0
        self.late_wins = 0
        self.losses = 0
        self.duplicates = 0
        self.expired_micros = 0
        self.lease_short = 0  # bids refused because a lease (not the budget) ran short: the fleet syncs early
        # Fleet: notices for auctions this instance holds no reservation for, (bidder, auction, won); fleet.py
        # relays them to the others so the instance that granted the bid settles its reservation early.
        self.foreign: list[tuple[str, str, bool]] = []

    # --- configuration -------------------------------------------------------------------------------------

    def configure(self, bidder_id: str, config: BidderConfig, spent: int = 0) -> Bidder:
        """Create or replace a bidder. Replacing keeps its ledger (spend and open reservations) when the
        period is unchanged; the controller re-plans the rest of the period from the new settings."""
        now = self.clock()
        window = window_at(config.period, now)
        bidder = self.bidders.get(bidder_id)
        if bidder is None:
            slot = self._free.pop() if self._free else len(self._slots)
            if slot == len(self._slots):
                self._slots.append(None)
            self.controller.ensure(len(self._slots))
            self.controller.reset(slot, MODES[config.pacing])
            self._fresh.add(slot)
            bidder = Bidder(bidder_id, config, window, slot, spent, self.leased, (self._throttle, self._multiplier))
            self.bidders[bidder_id] = bidder
            bisect.insort(self.ids, bidder_id)
            self._slots[slot] = bidder
            model = self.models.get(bidder_id)
            if model is not None:
                self._install(bidder, model, fresh=True)
        else:
            if window.key != bidder.window.key:
                bidder.ledger.renew(config.budget_micros, spent)
            bidder.ledger.budget = config.budget_micros
            bidder.config = config
            bidder.mode = MODES[config.pacing]
            bidder.window = window
            bidder.ends_at = window.end if isinstance(config.period, Flight) else math.inf
        self._plan_window(bidder)
        self._publish(bidder)
        self.touch(bidder)
        return bidder

    def touch(self, bidder: Bidder) -> None:
        """Something the tick reads changed outside the hot path (fleet spend, lost state): re-gather its row."""
        self._dirty.add(bidder.slot)
        self._expiring.add(bidder.slot)

    def hold_back(self, bidder_id: str, micros: int, until: float) -> None:
        """After a restart: hold `micros` of this bidder unavailable until `until` (see Ledger.hold_back)."""
        bidder = self.bidders.get(bidder_id)
        if bidder is not None:
            bidder.ledger.hold_back(micros, until)
            self.touch(bidder)

    def holding(self) -> list[Bidder]:
        """Bidders with money reserved or held back: only those whose ledger can expire something are looked at."""
        out = []
        for s in self._expiring:
            b = self._slots[s] if s < len(self._slots) else None
            if b is not None and (b.ledger.reserved or b.ledger.holdback):
                out.append(b)
        return out

    def remove(self, bidder_id: str) -> bool:
        bidder = self.bidders.pop(bidder_id, None)
        if bidder is None:
            return False
        del self.ids[bisect.bisect_left(self.ids, bidder_id)]
        self._dirty.add(bidder.slot)  # its row goes idle
        self._slots[bidder.slot] = None
        self._free.append(bidder.slot)
        self.curves.release(bidder.curve_row)
        return True

    @property
    def curve(self) -> TrafficCurve:
        """The prior: the traffic curve of bidders without a fitted one."""
        return self.curves.prior

    def apply_model(self, record: ModelRecord) -> None:
        """Take a published model (and the last fit attempt's status). Raises ModelError, changing nothing, if
        the model does not validate. A bidder configured later gets it then."""
        model = FittedModel.from_record(record)
        self.fits[record.bidder_id] = record.fit
        current = self.models.get(record.bidder_id)
        if model is None or (current is not None and current.version == model.version):
            return
        self.models[record.bidder_id] = model
        bidder = self.bidders.get(record.bidder_id)
        if bidder is not None:  # not ticked yet: no bid of its own to keep, the model sets it
            self._install(bidder, model, fresh=bidder.slot in self._fresh)

    def _install(self, bidder: Bidder, model: FittedModel, fresh: bool) -> None:
        """The bidder paces by its own traffic curve from now on, and its bid follows the model's landscape."""
        if bidder.curve_row:
            self.curves.set(bidder.curve_row, model.curve)
        else:
            bidder.curve_row = self.curves.add(model.curve)
        bidder.model = model
        if isinstance(self.controller, Controller):  # replay's baselines have no feed-forward
            self.controller.set_feedforward(bidder.slot, model.spend, model.level, fresh)
        self._plan_window(bidder)
        self._dirty.add(bidder.slot)

    def period_key(self, bidder_id: str) -> str:
        """The period a win for this bidder is charged to now ('unknown' for a bidder not configured)."""
        bidder = self.bidders.get(bidder_id)
        return bidder.window.key if bidder is not None else "unknown"

    def _plan_window(self, bidder: Bidder) -> None:
        w = bidder.window
        tz = bidder.timezone
        local = np.array([w.start + utc_offset(tz, w.start), w.end + utc_offset(tz, w.end)])
        start_w, end_w = self.curves.weight(np.full(2, bidder.curve_row), local)
        bidder.weights = (float(start_w), float(end_w))

    # --- the hot path ---------------------------------------------------------------------------------------

    def decide(self, bidder_id: str, auction_id: str, bid_micros: int) -> tuple[int, str]:
        """Bid or not, and at what price. Returns (granted micros, "") or (0, reason). O(1), no I/O."""
        bidder = self.bidders.get(bidder_id)
        if bidder is None:
            return self._deny(UNKNOWN_BIDDER)
        bidder.seen += 1
        slot = bidder.slot
        self._dirty.add(slot)
        config = bidder.config
        if config.paused:
            return self._deny(PAUSED)
        now = self.clock()
        if now < bidder.window.start or now >= bidder.ends_at:
            return self._deny(NOT_ACTIVE)
        ledger = bidder.ledger
        if ledger.spent >= ledger.budget:
            return self._deny(EXHAUSTED)
        throttle = self._throttle[slot]
        if throttle < 1.0 and self._random() >= throttle:
            return self._deny(PACED)
        price = int(bid_micros * self._multiplier[slot])
        cap = config.max_bid_micros
        if cap is not None and price > cap:
            price = cap
        if price < 1:
            return self._deny(PACED)
        available = ledger.available
        if price > available:
            if ledger.limit is not None:  # a lease, not the budget, is short: ask for more at the next sync
                bidder.short += price
                self.lease_short += 1
            if available <= 0:
                return self._deny(BUDGET_UNKNOWN if bidder.lost else NO_BUDGET)
            price = available  # the last micros stay spendable: bid what is left rather than nothing
        ledger.reserve(auction_id, price, now)
        self._expiring.add(slot)
        self.decisions["bid"] += 1
        return price, ""

    def _deny(self, reason: str) -> tuple[int, str]:
        self.decisions[reason] += 1
        return 0, reason

    # --- settlement (after the store made wins durable) ------------------------------------------------------

    def win(self, bidder_id: str, auction_id: str, price_micros: int) -> None:
        """Charge a new win (the store has recorded it once). Unknown bidders' wins live only in the store."""
        self.wins += 1
        bidder = self.bidders.get(bidder_id)
        if bidder is None:
            return
        self._dirty.add(bidder.slot)
        capture = bidder.ledger.capture(auction_id, price_micros, self.clock())
        if capture.delay is not None:
            self.delays.observe(capture.delay)
        bidder.wins += 1
        if capture.matched:
            bidder.settled_spent += price_micros
        else:
            self.late_wins += 1
            bidder.unmatched_spent += price_micros
            if self.leased:
                self.foreign.append((bidder_id, auction_id, True))

    def duplicate(self, bidder_id: str, auction_id: str) -> None:
        """A win recorded before: nothing is charged, but its reservation (if any) is settled."""
        self.duplicates += 1
        self.loss(bidder_id, auction_id, count=False)

    def loss(self, bidder_id: str, auction_id: str, count: bool = True) -> None:
        if count:
            self.losses += 1
        bidder = self.bidders.get(bidder_id)
        if bidder is None:
            return
        self._dirty.add(bidder.slot)
        if not bidder.ledger.release(auction_id) and self.leased:
            self.foreign.append((bidder_id, auction_id, False))

    def settled_elsewhere(self, bidder_id: str, auction_id: str, won: bool) -> None:
        """Another instance got this auction's notice. A loss frees the reservation now. A win was charged there
        but is not in the fleet's spend until that instance syncs: the reservation stays held until the fleet store
        says the win is counted (or it expires), else its money could be granted twice. Nothing is charged here."""
        bidder = self.bidders.get(bidder_id)
        if bidder is None:
            return
        self._dirty.add(bidder.slot)
        if won:
            bidder.ledger.hold_elsewhere(auction_id)
        else:
            bidder.ledger.release(auction_id)

    # --- the tick --------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire reservations, roll daily periods over and re-plan every bidder, all at once."""
        for _ in self.tick_steps():
            pass

    def tick_steps(self, chunk: int = TICK_CHUNK) -> Iterator[None]:
        """The tick in steps: yields after every `chunk` bidders touched so the service can let bids through in
        between. Per-bidder Python runs only for bidders that changed since the last tick (traffic, settlement,
        configuration: `_dirty`) and those with reservations that can expire (`_expiring`); everything else is
        vectorised over the columns, whose rows stay as they were gathered. No I/O."""
        now = self.clock()
        dt = now - self._last_tick
        self._last_tick = now
        ttl = self.delays.refresh()
        n = len(self._slots)
        if n == 0:
            return
        self._grow(n)
        forget = min(self.params.ttl_max_s, EXPIRED_KEPT_TTLS * ttl)  # expired grants are never kept longer
        for i, s in enumerate(list(self._expiring)):
            if i and i % chunk == 0:
                yield
            b = self._slots[s] if s < n else None
            if b is None:
                self._expiring.discard(s)
                continue
            ledger = b.ledger
            self.expired_micros += ledger.expire(now, ttl, forget)
            self._dirty.add(s)
            if ledger.nothing_to_expire:
                self._expiring.discard(s)
        cols = self._cols
        for s in np.flatnonzero((cols[:n, DAILY] == 1.0) & (cols[:n, END] <= now)).tolist():
            b = self._slots[s]
            if b is not None and isinstance(b.config.period, Daily) and now >= b.window.end:
                self._roll(b, now)  # the period rolled over: renews the ledger, marks the row
        self._fresh.clear()
        dirty, self._dirty = self._dirty, set()
        slots: list[int] = []
        rows: list[tuple[float, ...]] = []
        for i, s in enumerate(dirty):
            if i and i % chunk == 0:
                yield
            if s >= n:
                self._dirty.add(s)  # configured during a yield: next tick
                continue
            b = self._slots[s]
            if b is not None and now >= b.window.end and isinstance(b.config.period, Daily):
                self._roll(b, now)  # changed since its row was gathered: the columns did not know its window
            slots.append(s)
            rows.append(self._row(b) if b is not None else tuple(_IDLE.tolist()))
            if b is not None:
                b.settled_spent = b.unmatched_spent = b.wins = b.seen = 0
        if slots:
            cols[slots] = np.array(rows, dtype=np.float64)
        yield
        c = cols[:n]
        offsets = np.array([utc_offset(tz, now) for tz in self._tz], dtype=np.float64)
        offset_s = offsets[c[:, TZ].astype(np.int64)] if len(offsets) else np.zeros(n)
        active = self._states(c, now) == STATES.index("active")
        active[[s for s in self._fresh if s < n]] = False
        start, end = c[:, START], c[:, END]
        ahead = np.minimum(now + self.controller.horizon(start, end), end)
        curve_rows = c[:, CURVE_ROW].astype(np.int64)
        inputs = TickInputs(
            active=active,
            mode=c[:, MODE].astype(np.int8),
            budget=c[:, BUDGET],
            spent=c[:, SPENT],
            reserved=c[:, RESERVED],
            holdback=c[:, HOLDBACK],
            start=start,
            end=end,
            weight_now=self.curves.weight(curve_rows, now + offset_s),
            weight_ahead=self.curves.weight(curve_rows, ahead + offset_s),
            weight_start=c[:, W_START],
            weight_end=c[:, W_END],
            settled_spent=c[:, SETTLED].copy(),
            unmatched_spent=c[:, UNMATCHED].copy(),
            wins=c[:, WINS].copy(),
            seen=c[:, SEEN].copy(),
        )
        c[:, SETTLED : SEEN + 1] = 0.0  # tallies are per tick: the rows not re-gathered next time had none
        self.controller.update(now, dt, inputs, self.delays.mean)
        yield
        # Bidders created during a yield keep what configure set (the results for a reused slot were computed
        # from its predecessor's row); the lists cover every slot there is now.
        m = len(self._slots)
        throttle = self.controller.throttle[:m].tolist()
        multiplier = self.controller.multiplier[:m].tolist()
        for s in self._fresh:
            if s < len(self._throttle):
                throttle[s], multiplier[s] = self._throttle[s], self._multiplier[s]
        self._throttle[:], self._multiplier[:] = throttle, multiplier  # in place: bidders hold these lists

    def _row(self, b: Bidder) -> tuple[float, ...]:
        """The bidder's row of the tick's columns (see NCOLS)."""
        ledger = b.ledger
        tz = self._tz.setdefault(b.config.period.timezone, len(self._tz))
        return (
            ledger.budget,
            ledger.spent,
            ledger.reserved,
            ledger.holdback,
            b.window.start,
            b.window.end,
            tz,
            b.weights[0],
            b.weights[1],
            b.settled_spent,
            b.unmatched_spent,
            b.wins,
            b.seen,
            b.curve_row,
            b.ends_at,
            1.0,
            1.0 if b.config.paused else 0.0,
            1.0 if b.lost else 0.0,
            1.0 if isinstance(b.config.period, Daily) else 0.0,
            b.mode,
        )

    @staticmethod
    def _states(c: F64, now: float) -> npt.NDArray[np.int64]:
        """Each row's index in STATES (-1: a free slot), as Bidder.state decides it, for all rows at once."""
        out = np.full(c.shape[0], STATES.index("active"), dtype=np.int64)
        for state, where in (  # the reverse of Bidder.state's order: the first test there wins here
            ("exhausted", c[:, SPENT] >= c[:, BUDGET]),
            ("ended", now >= c[:, ENDS_AT]),
            ("scheduled", now < c[:, START]),
            ("paused", c[:, PAUSED_FLAG] == 1.0),
            ("store_lost", c[:, LOST_FLAG] == 1.0),
        ):
            out[where] = STATES.index(state)
        out[c[:, OCCUPIED] == 0.0] = -1
        return out

    def totals(self) -> Totals:
        """For /metrics: budget, spend and reservations summed, bidders by state, bidders pacing by a fitted curve.
        The columns give the bidders unchanged since the last tick (numpy, no per-bidder Python); the ones changed
        since are read directly, so the figures are current."""
        n = len(self._slots)
        self._grow(n)
        c = self._cols[:n]
        now = self.clock()
        clean = c[:, OCCUPIED] == 1.0
        changed = [b for s in self._dirty if s < n and (b := self._slots[s]) is not None]
        clean[[s for s in self._dirty if s < n]] = False
        counts = np.bincount(self._states(c, now)[clean], minlength=len(STATES)).tolist()
        states = dict(zip(STATES, counts, strict=True))
        for b in changed:
            states[b.state(now)] += 1
        ledgers = [b.ledger for b in changed]
        return Totals(
            budget=int(c[clean, BUDGET].sum()) + sum(x.budget for x in ledgers),
            spent=int(c[clean, SPENT].sum()) + sum(x.spent for x in ledgers),
            reserved=int(c[clean, RESERVED].sum()) + sum(x.reserved for x in ledgers),
            states=states,
            fitted=int((clean & (c[:, CURVE_ROW] > 0)).sum()) + sum(1 for b in changed if b.model is not None),
        )

    def _grow(self, n: int) -> None:
        have = self._cols.shape[0]
        if n > have:
            grown = np.tile(_IDLE, (max(n, 2 * have), 1))
            grown[:have] = self._cols
            self._cols = grown

    def _roll(self, bidder: Bidder, now: float) -> None:
        window = window_at(bidder.config.period, now)
        if window.key != bidder.window.key:
            bidder.ledger.renew(bidder.config.budget_micros, 0)
        bidder.window = window
        self._plan_window(bidder)

    def _publish(self, bidder: Bidder) -> None:
        ctl = self.controller
        slot = bidder.slot
        while len(self._throttle) <= slot:
            self._throttle.append(1.0)
            self._multiplier.append(1.0)
        self._throttle[slot] = float(ctl.throttle[slot])
        self._multiplier[slot] = float(ctl.multiplier[slot])

    def target(self, bidder: Bidder, times: F64, window: Window | None = None) -> F64:
        """The share of the budget the bidder's curve says should be spent by each of `times` in `window`
        (default: its current period). Status pages and replay metrics read the curve the tick steers to."""
        w = window or bidder.window
        tz = bidder.timezone
        edges = np.array([w.start + utc_offset(tz, w.start), w.end + utc_offset(tz, w.end)])
        start_w, end_w = self.curves.weight(np.full(2, bidder.curve_row), edges) if window else bidder.weights
        local = times + np.array([utc_offset(tz, t) for t in times.tolist()])
        full = np.ones_like(times)
        weight = self.curves.weight(np.full(times.shape, bidder.curve_row), local)
        return progress(
            np.full(times.shape, bidder.mode, dtype=np.int8),
            times,
            full * w.start,
            full * w.end,
            weight,
            full * start_w,
            full * end_w,
        )

    # --- status ----------------------------------------------------------------------------------------------

    def status(self, bidder_id: str) -> dict[str, object] | None:
        bidder = self.bidders.get(bidder_id)
        if bidder is None:
            return None
        now = self.clock()
        w = bidder.window
        ledger = bidder.ledger
        fraction = float(self.target(bidder, np.array([now], dtype=np.float64))[0])
        return {
            "bidder_id": bidder_id,
            "state": bidder.state(now),
            "budget_micros": ledger.budget,
            "spent_micros": ledger.spent,
            "reserved_micros": ledger.reserved + ledger.holdback,  # held back after a restart counts too
            "remaining_micros": ledger.remaining,
            "target_spent_micros": int(ledger.budget * fraction),
            "period_start": w.start,
            "period_end": w.end,
            "pacing": bidder.config.pacing,
            "max_bid_micros": bidder.config.max_bid_micros,
            "throttle": bidder.throttle,
            "multiplier": bidder.multiplier,
            "model": self.model_status(bidder_id),
        }

    def model_status(self, bidder_id: str) -> dict[str, object]:
        """Which curve the bidder paces by, and how the last refit of it went."""
        model = self.models.get(bidder_id)
        out: dict[str, object] = {"source": "prior", "version": 0}
        if model is not None:
            doc = model.doc
            out = {
                "source": "fitted",
                "version": model.version,
                "fitted_at": doc["fitted_at"],
                "rows": doc["rows"],
                "landscape": doc.get("landscape") is not None,
                "fit_error": doc.get("fit_error"),
            }
        out["last_fit"] = self.fits.get(bidder_id)
        return out
