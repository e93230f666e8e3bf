"""ledger.py: one bidder's money in integer micros: reservations, capture, release, expiry.

No I/O and no floats for money: everything here runs on the bid hot path. Durability and win dedupe are the
store's job; the ledger is told only about wins the store said were new.

Invariant (checked by property tests): spent + reserved + holdback <= budget, whatever the interleaving of
reserve, capture, release and expire, except for money the ledger is told was spent without a reservation
covering it (late wins, wins on auctions it never granted, a price above the reservation). That money is
still charged (it was spent) and counted in `uncovered`, so the bound on it is visible.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Capture:
    """What a win did to the ledger: whether it matched an open reservation, and the win-notice delay when the
    grant time is known (feeds the adaptive reservation TTL)."""

    matched: bool
    delay: float | None


class Ledger:
    """Budget, spend and open reservations of one bidder in its current period."""

    __slots__ = (
        "_elsewhere",
        "_expired",
        "_granted",
        "_open",
        "budget",
        "holdback",
        "holdback_until",
        "limit",
        "reserved",
        "spent",
        "uncovered",
    )

    def __init__(self, budget: int, spent: int = 0, limit: int | None = None) -> None:
        self.budget = budget
        self.spent = spent
        # In a fleet, what this instance may commit: the fleet's spend plus its lease (see fleet.py). None alone.
        self.limit = limit
        self.reserved = 0
        # Money held back after a restart: reservations granted before a crash are unknown, so the last
        # snapshot of their total is held until they must have expired (see Snapshots.save_reserved).
        self.holdback = 0
        self.holdback_until = 0.0
        self.uncovered = 0
        # Open grants: auction_id -> micros and auction_id -> granted_at, both in grant order (the clock never
        # goes back, so expiry takes them from the front). Plain dicts of ints and floats, not of tuples: the
        # garbage collector never tracks such a dict, whereas one of tuples is traversed entry by entry in every
        # full collection (10^6 open grants made those 300-500 ms pauses).
        self._open: dict[str, int] = {}
        self._granted: dict[str, float] = {}
        # Recently expired grants, auction_id -> granted_at: a late win still tells its true delay.
        self._expired: dict[str, float] = {}
        # Fleet: grants won at another instance, held (still in `reserved`, exempt from expiry) until the fleet's
        # spend includes the win; fleet.py releases them.
        self._elsewhere: dict[str, tuple[int, float]] = {}

    @property
    def available(self) -> int:
        """Micros that can still be reserved now."""
        cap = self.budget if self.limit is None or self.limit > self.budget else self.limit
        return cap - self.spent - self.reserved - self.holdback

    @property
    def remaining(self) -> int:
        """Micros not yet spent (reservations included)."""
        return max(0, self.budget - self.spent)

    @property
    def nothing_to_expire(self) -> bool:
        """No open, expired, held-back or held-elsewhere money: expire() would do nothing until the next grant."""
        return not (self._open or self._expired or self.holdback or self._elsewhere)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def reserve(self, auction_id: str, micros: int, now: float) -> bool:
        """Hold `micros` for a granted bid. A repeated request for the same auction replaces its hold."""
        previous = self._open.pop(auction_id, None)
        if previous is not None:
            self.reserved -= previous
            granted_at = self._granted.pop(auction_id)
        if micros <= 0 or micros > self.available:
            if previous is not None:
                self._open[auction_id] = previous
                self._granted[auction_id] = granted_at
                self.reserved += previous
            return False
        self._open[auction_id] = micros
        self._granted[auction_id] = now
        self.reserved += micros
        return True

    def capture(self, auction_id: str, price_micros: int, now: float) -> Capture:
        """Charge a new win: frees its reservation (if still open) and adds the price to spend."""
        micros = self._open.pop(auction_id, None)
        self.spent += price_micros
        if micros is not None:
            granted_at = self._granted.pop(auction_id)
            self.reserved -= micros
            self.uncovered += max(0, price_micros - micros)
            return Capture(True, now - granted_at)
        granted_at_or_none = self._expired.pop(auction_id, None)
        # Unmatched money first uses up the post-restart holdback, which exists to cover exactly this.
        covered = min(self.holdback, price_micros)
        self.holdback -= covered
        self.uncovered += price_micros - covered
        delay = None if granted_at_or_none is None else now - granted_at_or_none
        return Capture(False, delay)

    def hold_elsewhere(self, auction_id: str) -> None:
        """Another instance charged a win on this grant: keep its money held, past its expiry, until released."""
        micros = self._open.pop(auction_id, None)
        if micros is not None:
            self._elsewhere[auction_id] = (micros, self._granted.pop(auction_id))

    def elsewhere(self) -> list[str]:
        return list(self._elsewhere)

    def release(self, auction_id: str) -> int:
        """A loss (or a duplicate win, or a win counted elsewhere): free the reservation. Returns the micros freed
        (0 if none was open)."""
        micros = self._open.pop(auction_id, None)
        if micros is not None:
            del self._granted[auction_id]
        else:
            held = self._elsewhere.pop(auction_id, None)
            if held is None:
                self._expired.pop(auction_id, None)
                return 0
            micros = held[0]
        self.reserved -= micros
        return micros

    def expire(self, now: float, ttl: float, forget_after: float) -> int:
        """Free reservations older than `ttl`; forget expired grants older than `forget_after`.
        Returns the micros freed."""
        if self.nothing_to_expire:
            return 0
        freed = 0
        for auction_id, granted_at in _older_than(self._granted, now - ttl):
            del self._granted[auction_id]
            freed += self._open.pop(auction_id)
            self._expired[auction_id] = granted_at
        forget_cutoff = now - forget_after
        for auction_id, (micros, granted_at) in list(self._elsewhere.items()):
            if granted_at <= forget_cutoff:  # never confirmed (its instance died unsynced): give up at last
                del self._elsewhere[auction_id]
                freed += micros
        self.reserved -= freed
        for auction_id, _ in _older_than(self._expired, forget_cutoff):
            del self._expired[auction_id]
        if self.holdback and now >= self.holdback_until:
            self.holdback = 0
        return freed

    def hold_back(self, micros: int, until: float) -> None:
        """Hold `micros` unavailable until `until` (after a restart; see the class docstring)."""
        self.holdback = max(0, min(micros, self.budget - self.spent - self.reserved))
        self.holdback_until = until

    def renew(self, budget: int, spent: int) -> None:
        """Start a new period. Open reservations carry over: their wins are spent in the new period. A lease
        belongs to its period: the new one starts with none."""
        self.budget = budget
        self.spent = spent
        if self.limit is not None:
            self.limit = spent
        self.uncovered = 0


def _older_than(times: dict[str, float], cutoff: float) -> list[tuple[str, float]]:
    """The leading entries of a time-ordered dict at or before `cutoff`, found in one pass. (Popping the front
    entry by entry would rescan the deleted slots a dict keeps at its front every time: quadratic.)"""
    out = []
    for item in times.items():
        if item[1] > cutoff:
            break
        out.append(item)
    return out
