"""Traffic-curve fit on synthetic Poisson rollups with known shapes, weekday factors and time zones."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from pacer.curves import SLOTS, TrafficCurve
from pacer.refit.rolled import DAY_MS, SLOT_MS, Rollup
from pacer.refit.traffic import TrafficFits, fit_traffic

F64 = npt.NDArray[np.float64]

PRIOR = TrafficCurve.load(Path(__file__).parents[2] / "models" / "prior" / "traffic.json")
MONDAY = 19_723  # 2024-01-01 as a UTC epoch day
HOUR = 12  # slots
FLAT_WEEK = np.ones(7)
L1_BOUND = 0.05


def cosine(peak_to_trough: float, peak_slot: int) -> F64:
    a = (peak_to_trough - 1) / (peak_to_trough + 1)
    p = 1 + a * np.cos(2 * np.pi * (np.arange(SLOTS) - peak_slot) / SLOTS)
    return p / p.sum()


@dataclass
class Bidder:
    shape: F64  # local-time shares
    per_day: float  # expected decisions on an average weekday
    weekday: F64 = field(default_factory=lambda: FLAT_WEEK)
    tz: str = "UTC"


def local_slots(tz: str, start_ms: int, end_ms: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(local slot, local Monday-first weekday) of every UTC slot, straight from zoneinfo."""
    zone = ZoneInfo(tz)
    slots, dows = [], []
    for ms in range(start_ms, end_ms, SLOT_MS):
        t = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone)
        slots.append(t.hour * HOUR + t.minute // 5)
        dows.append(t.weekday())
    return np.asarray(slots), np.asarray(dows)


def simulate(
    bidders: dict[str, Bidder], start_ms: int, end_ms: int, seed: int = 1, off: tuple[int, int] | None = None
) -> Rollup:
    """Poisson decisions per UTC (day, slot); `off` = a (start_ms, end_ms) when no bidder logged anything."""
    rng = np.random.default_rng(seed)
    u = np.arange(start_ms, end_ms, SLOT_MS) // SLOT_MS
    logging = np.ones(len(u), dtype=bool) if off is None else (u < off[0] // SLOT_MS) | (u >= off[1] // SLOT_MS)
    cols: dict[str, list[object]] = {"bidder": [], "day": [], "slot": [], "n": []}
    for name, b in bidders.items():
        slot, dow = local_slots(b.tz, start_ms, end_ms)
        counts = rng.poisson(b.per_day * b.weekday[dow] * b.shape[slot]) * logging
        hit = np.flatnonzero(counts)
        cols["bidder"] += [name] * len(hit)
        cols["day"] += (u[hit] // SLOTS).tolist()
        cols["slot"] += (u[hit] % SLOTS).tolist()
        cols["n"] += counts[hit].tolist()
    traffic = {
        "bidder": np.asarray(cols["bidder"], dtype=object),
        "day": np.asarray(cols["day"], dtype=np.int64),
        "slot": np.asarray(cols["slot"], dtype=np.int64),
        "n": np.asarray(cols["n"], dtype=np.float64),
        "rows": np.asarray(cols["n"], dtype=np.int64),
    }
    return Rollup(traffic, {}, {}, {}, start_ms, end_ms)


def fit(bidders: dict[str, Bidder], start_ms: int, end_ms: int, **kw: object) -> TrafficFits:
    rollup = simulate(bidders, start_ms, end_ms, **kw)  # type: ignore[arg-type]
    return fit_traffic(rollup, {name: b.tz for name, b in bidders.items()}, PRIOR)


def l1(a: F64, b: F64) -> float:
    return float(np.abs(a - b).sum())


FLEET = {
    "steps": Bidder(PRIOR.by_slot, 20_000),  # hourly steps, 9x night to peak
    "cosine": Bidder(cosine(9, 18 * HOUR), 20_000),
    "night": Bidder(cosine(3, 3 * HOUR), 30_000),
}
WEEK = (MONDAY * DAY_MS, (MONDAY + 7) * DAY_MS)


def test_a_week_at_20k_a_day_recovers_the_shape() -> None:
    fits = fit(FLEET, *WEEK)
    for name in ("steps", "cosine"):
        got, truth = fits.bidders[name], FLEET[name].shape
        print(
            f"\n{name}: L1 {l1(got.by_slot, truth):.4f}, bandwidth {got.bandwidth_slots}, "
            f"cv {got.cv_error:.4f}, own weight {got.own_weight:.4f}"
        )
        assert l1(got.by_slot, truth) <= L1_BOUND
        assert l1(fits.fleet.by_slot, truth) > 4 * L1_BOUND  # ending at the fleet would fail
        assert got.own_weight > 0.95
        assert np.isclose(got.by_slot.sum(), 1.0) and np.isclose(got.weekday_factor.mean(), 1.0)
    # The smooth curve takes a wider kernel than the hourly steps.
    assert fits.bidders["cosine"].bandwidth_slots > fits.bidders["steps"].bandwidth_slots


def test_a_bidder_with_200_decisions_gets_the_fleet_curve() -> None:
    volume = {name: b.per_day for name, b in FLEET.items()}
    mix = sum(FLEET[name].shape * v for name, v in volume.items()) / sum(volume.values())
    bidders = {**FLEET, "tiny": Bidder(mix, 200 / 7), "tiny-steps": Bidder(PRIOR.by_slot, 200 / 7)}
    rollup = simulate(bidders, *WEEK)
    fits = fit_traffic(rollup, {}, PRIOR)
    tiny = fits.bidders["tiny"]
    t = rollup.traffic
    mine = t["bidder"] == "tiny"
    raw = np.bincount(t["slot"][mine], weights=t["n"][mine], minlength=SLOTS)
    print(
        f"\ntiny ({raw.sum():.0f} decisions): L1 to fleet {l1(tiny.by_slot, fits.fleet.by_slot):.4f}, "
        f"to own counts {l1(tiny.by_slot, raw / raw.sum()):.3f}, own weight {tiny.own_weight:.3f}"
    )
    assert l1(tiny.by_slot, fits.fleet.by_slot) < 0.05
    assert l1(tiny.by_slot, raw / raw.sum()) > 0.5
    assert tiny.own_weight < 0.2 and tiny.weekday_own_weight < 0.2
    # A tiny bidder whose shape is far from the fleet's keeps what stands out above its noise (James–Stein), which
    # lands nearer its truth than the fleet curve is.
    steps = fits.bidders["tiny-steps"]
    print(
        f"tiny with the prior's steps: own weight {steps.own_weight:.3f}, "
        f"L1 to truth {l1(steps.by_slot, PRIOR.by_slot):.3f} (the fleet's: {l1(fits.fleet.by_slot, PRIOR.by_slot):.3f})"
    )
    assert l1(steps.by_slot, PRIOR.by_slot) < l1(fits.fleet.by_slot, PRIOR.by_slot)


def test_partial_days_and_a_logging_gap_bias_neither_shape_nor_weekdays() -> None:
    weekday = PRIOR.weekday_factor
    bidders = {**FLEET, "weekly": Bidder(PRIOR.by_slot, 20_000, weekday)}
    start = MONDAY * DAY_MS + 13 * 3_600_000  # Monday 13:00 ...
    end = (MONDAY + 7) * DAY_MS + 5 * 3_600_000  # ... to next Monday 05:00: Monday seen 16 hours
    gap = ((MONDAY + 3) * DAY_MS + 6 * 3_600_000, (MONDAY + 3) * DAY_MS + 9 * 3_600_000)  # Thursday 06-09
    rollup = simulate(bidders, start, end, off=gap)
    got = fit_traffic(rollup, {}, PRIOR).bidders["weekly"]
    t = rollup.traffic
    mine = t["bidder"] == "weekly"
    naive = np.bincount((t["day"][mine] - MONDAY) % 7, weights=t["n"][mine], minlength=7)
    naive /= naive.mean()
    print(
        f"\npartial days: L1 {l1(got.by_slot, PRIOR.by_slot):.4f}, weekday error "
        f"{np.abs(got.weekday_factor - weekday).max():.4f} (without exposure: {np.abs(naive - weekday).max():.3f})"
    )
    assert l1(got.by_slot, PRIOR.by_slot) <= L1_BOUND
    assert np.abs(got.weekday_factor - weekday).max() <= 0.03
    assert np.abs(naive - weekday).max() > 0.2  # what ignoring exposure would give


def test_weekday_factors_recovered_over_two_weeks() -> None:
    weekday = np.array([1.3, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7])
    fits = fit({**FLEET, "weekly": Bidder(cosine(4, 100), 20_000, weekday)}, MONDAY * DAY_MS, (MONDAY + 14) * DAY_MS)
    got = fits.bidders["weekly"].weekday_factor
    print(f"\nweekday factors: max error {np.abs(got - weekday).max():.4f}")
    assert np.abs(got - weekday).max() <= 0.03


def test_new_york_is_fitted_in_local_time_across_dst() -> None:
    truth = cosine(9, 20 * HOUR)  # peaks at 20:00 New York time
    bidders = {**FLEET, "ny": Bidder(truth, 20_000, tz="America/New_York")}
    start = datetime(2024, 3, 6, tzinfo=UTC)  # clocks go forward on Sunday 10 March at 07:00 UTC
    window = (int(start.timestamp() * 1000), int(start.timestamp() * 1000) + 10 * DAY_MS)
    rollup = simulate(bidders, *window)
    local = fit_traffic(rollup, {"ny": "America/New_York"}, PRIOR).bidders["ny"]
    fixed = fit_traffic(rollup, {"ny": "Etc/GMT+5"}, PRIOR).bidders["ny"]  # EST all along: no DST
    utc = fit_traffic(rollup, {}, PRIOR).bidders["ny"]
    errors = {name: l1(f.by_slot, truth) for name, f in (("local", local), ("EST only", fixed), ("UTC", utc))}
    print("\nNew York L1:", {k: round(v, 4) for k, v in errors.items()})
    assert errors["local"] <= 0.03
    assert errors["EST only"] > errors["local"] + 0.02
    assert errors["UTC"] > 0.5


def test_a_single_day_cannot_be_cross_validated() -> None:
    fits = fit(FLEET, MONDAY * DAY_MS, (MONDAY + 1) * DAY_MS)
    got = fits.bidders["cosine"]
    assert got.cv_error is None and got.bandwidth_slots == 8.0
    assert np.isclose(got.by_slot.sum(), 1.0) and got.days == 1.0


def test_no_traffic_gives_the_prior() -> None:
    empty = {"bidder": np.array([], dtype=object), "day": np.array([]), "slot": np.array([]), "n": np.array([])}
    fits = fit_traffic(Rollup({**empty, "rows": np.array([])}, {}, {}, {}, 0, DAY_MS), {}, PRIOR)
    assert fits.bidders == {} and np.allclose(fits.fleet.by_slot, PRIOR.by_slot)
