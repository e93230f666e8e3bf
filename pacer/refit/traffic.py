"""traffic.py: each bidder's daily traffic shape (288 local 5-minute slots) and weekday factors, fitted from the
rollup's traffic counts. Pure numpy on arrays already in memory; no I/O.

The model: decisions of a bidder in local (day d, slot s) ~ Poisson(exposure[d, s] * f[weekday(d)] * q[s]), where
exposure says how often the fleet was logging there (0 outside the window or while logging was off, 2 in the
repeated hour of a DST fall-back), q is the slot rate (shape times daily level) and f the weekday factor. Days
are weighted by recency. The shape is then smoothed with a circular Gaussian kernel whose bandwidth is chosen by
leave-one-day-out cross-validation, and shrunk toward the fleet (which is shrunk toward the prior) with a
positive-part James–Stein weight, so a bidder with little data gets the fleet's curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pacer.curves import EPOCH_DOW, SLOTS, TrafficCurve
from pacer.periods import utc_offset
from pacer.refit.rolled import DAY_MS, SLOT_MS, Rollup

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

BANDWIDTHS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # kernel sd in slots: none .. 40 minutes
HALF_LIFE_DAYS = 14.0
ALTERNATIONS = 3  # shape <-> weekday rounds; two already settle when exposure covers whole weeks
SLOT_S = SLOT_MS // 1000
DAY_S = DAY_MS // 1000
_TINY = 1e-9  # relative to the largest: smoothed exposure below this is "not observed" (FFT round-off, tails)


@dataclass(frozen=True)
class TrafficFit:
    """One fitted traffic curve, with what the fit saw and how sure it was."""

    by_slot: F64  # 288 shares of a local day, sum 1, slot 0 = 00:00-00:05 local
    weekday_factor: F64  # 7, Monday first, mean 1
    bandwidth_slots: float  # sd of the smoothing kernel chosen by cross-validation
    cv_error: float | None  # held-out Poisson deviance per decision; None when fewer than 2 days to hold out
    own_weight: float  # James–Stein weight of the own shape against the fleet's (the fleet's: against the prior)
    weekday_own_weight: float  # the same for the weekday factors
    days: float  # exposure: logged slots / 288
    decisions: float  # weighted decisions seen
    rows: int  # raw log rows seen


@dataclass(frozen=True)
class TrafficFits:
    fleet: TrafficFit
    bidders: dict[str, TrafficFit]


def group_by_bidder(bidder: npt.NDArray[np.generic]) -> dict[str, I64]:
    """Row indices of each bidder, hashed through Arrow: np.unique would sort millions of Python strings."""
    if len(bidder) == 0:
        return {}
    import pyarrow as pa  # here, not at the top: the engine imports this module (model validation), not the fit

    encoded = pa.array(bidder, type=pa.string()).dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = encoded.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
    return {name: order[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}


def kernel(bandwidth: float) -> F64:
    """Circular Gaussian weights over the 288 slot offsets (index j = offset j, wrapping midnight), sum 1."""
    j = np.arange(SLOTS)
    dist: F64 = np.minimum(j, SLOTS - j).astype(np.float64)
    if bandwidth <= 0:
        centre: npt.NDArray[np.bool_] = dist == 0
        return centre.astype(np.float64)
    k: F64 = np.exp(-0.5 * (dist / bandwidth) ** 2)
    return np.asarray(k / k.sum(), dtype=np.float64)


@dataclass(frozen=True)
class _Days:
    """Counts and exposure on a bidder's (or the fleet's) local days."""

    first_day: int  # local epoch day of row 0
    counts: F64  # (days, 288) weighted decisions
    expo: F64  # (days, 288) exposure (for the fleet: expected decisions per unit of shape)
    weight: F64  # (days,) recency weight

    @property
    def dow(self) -> I64:
        return (np.arange(len(self.counts)) + self.first_day + EPOCH_DOW) % 7


@dataclass(frozen=True)
class _Shape:
    rate: F64  # 288 smoothed slot rates, NaN where nothing was observed even after smoothing
    bandwidth: float
    cv_error: float | None
    noise: float  # expected squared error of the smoothed shares from Poisson counting


def _recency(first_day: int, n_days: int, until_local_days: float, half_life: float) -> F64:
    age = until_local_days - (np.arange(n_days) + first_day + 0.5)
    return np.asarray(0.5 ** (np.maximum(age, 0.0) / half_life), dtype=np.float64)


def _n_eff(weight: F64, n: F64) -> float:
    """Kish's effective count of recency-weighted Poisson counts."""
    sq = float(np.sum(weight**2 * n))
    return float(np.sum(weight * n)) ** 2 / sq if sq > 0 else 0.0


def _weekday_rates(days: _Days, rate: F64) -> tuple[F64, F64]:
    """Observed / expected decisions per weekday given slot rates (the weekday half of the alternation), and the
    effective count behind each. NaN for weekdays without exposure."""
    dow = days.dow
    expected = days.expo @ np.nan_to_num(rate)
    observed = days.counts.sum(axis=1)
    num = np.bincount(dow, weights=days.weight * observed, minlength=7)
    den = np.bincount(dow, weights=days.weight * expected, minlength=7)
    seen = np.bincount(dow, weights=days.expo.sum(axis=1), minlength=7) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(seen, np.where(den > 0, num / den, 1.0), np.nan)
    sq = np.bincount(dow, weights=days.weight**2 * observed, minlength=7)
    n_eff = np.divide(num**2, sq, out=np.zeros(7), where=sq > 0)  # Kish, as in _n_eff
    mean = float(np.nanmean(f)) if seen.any() else 0.0
    return f / mean if mean > 0 else f, n_eff


def _alternate(days: _Days) -> tuple[F64, F64, F64]:
    """Poisson MLE of slot rates and weekday factors (mean 1 over seen weekdays) by alternating the two."""
    num = days.weight @ days.counts
    f = np.ones(7)
    for _ in range(ALTERNATIONS):
        den = (days.weight * np.nan_to_num(f, nan=1.0)[days.dow]) @ days.expo
        rate = np.divide(num, den, out=np.full(SLOTS, np.nan), where=den > 0)
        f, n_eff = _weekday_rates(days, rate)
    return rate, f, n_eff


def _smooth(days: _Days, bandwidths: tuple[float, ...]) -> _Shape:
    """Kernel-smoothed slot rates (ratio of smoothed counts to smoothed exposure, so gaps fill from their
    neighbours), bandwidth chosen by leave-one-day-out cross-validation.

    The held-out score is the Poisson deviance of the held-out day's counts against the other days' smoothed
    shape scaled to that day's total, i.e. twice the KL divergence of its shape, per decision. It is scored on the
    slots the other days observed, so every candidate is judged on the same slots."""
    num_d = days.weight[:, None] * days.counts
    den_d = days.weight[:, None] * days.expo
    num, den = num_d.sum(axis=0), den_d.sum(axis=0)
    fnum, fden = np.fft.rfft(num_d, axis=1), np.fft.rfft(den_d, axis=1)
    held = (days.expo > 0) & (den - den_d > _TINY * den.max())
    c = np.where(held, days.counts, 0.0)
    total = c.sum(axis=1)
    scored = float(days.weight @ total)
    filters = [np.fft.rfft(kernel(h)).real for h in bandwidths]
    errors = []
    for filt in filters:
        if scored <= 0:
            break
        loo_num = np.fft.irfft((fnum.sum(axis=0) - fnum) * filt, n=SLOTS, axis=1)
        loo_den = np.fft.irfft((fden.sum(axis=0) - fden) * filt, n=SLOTS, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            pred = np.where(held, days.expo * np.maximum(loo_num, 0.0) / np.maximum(loo_den, _TINY * den.max()), 0.0)
            mu = pred * (total / pred.sum(axis=1))[:, None]
            dev = 2.0 * np.where(c > 0, c * np.log(c / mu), 0.0).sum(axis=1)
        err = float(days.weight @ np.where(total > 0, dev, 0.0)) / scored
        errors.append(err if np.isfinite(err) else np.inf)
    pick = int(np.argmin(errors)) if errors else len(bandwidths) - 1  # no day to hold out: smooth the most
    filt = filters[pick]
    snum = np.fft.irfft(np.fft.rfft(num) * filt, n=SLOTS)
    sden = np.fft.irfft(np.fft.rfft(den) * filt, n=SLOTS)
    ok = sden > _TINY * sden.max() if sden.max() > 0 else np.zeros(SLOTS, dtype=bool)
    rate = np.divide(np.maximum(snum, 0.0), sden, out=np.full(SLOTS, np.nan), where=ok)
    # Shares of a kernel-smoothed multinomial: sum_s Var = sum_j k_j^2 / N (each share's variance p / N).
    noise = float(np.sum(kernel(bandwidths[pick]) ** 2)) / max(_n_eff(days.weight, days.counts.sum(axis=1)), 1e-12)
    cv = errors[pick] if errors and np.isfinite(errors[pick]) else None
    return _Shape(rate, float(bandwidths[pick]), cv, noise)


def _fill(own: F64, base: F64) -> F64:
    """Normalise `own` (NaN where unobserved) to sum 1 over its observed entries' share of `base`, taking the
    unobserved entries from `base`."""
    seen = np.isfinite(own)
    if not seen.any() or np.nansum(own) <= 0 or base[seen].sum() <= 0:
        return np.asarray(base / base.sum(), dtype=np.float64)
    out = np.where(seen, own / np.nansum(own) * base[seen].sum(), base)
    return np.asarray(out / out.sum(), dtype=np.float64)


def _fill_weekdays(own: F64, base: F64) -> F64:
    """Weekday factors with unseen weekdays taken from `base`, on the scale of the seen ones; mean 1."""
    seen = np.isfinite(own)
    if not seen.any() or own[seen].mean() <= 0:
        return np.asarray(base / base.mean(), dtype=np.float64)
    out = np.where(seen, own / own[seen].mean() * base[seen].mean(), base)
    return np.asarray(out / out.mean(), dtype=np.float64)


def _stein(own: F64, base: F64, noise: float) -> tuple[F64, float]:
    """Positive-part James–Stein: keep the part of own - base that stands out above the counting noise."""
    dist2 = float(np.sum((own - base) ** 2))
    w = float(np.clip(1.0 - noise / dist2, 0.0, 1.0)) if dist2 > 0 and np.isfinite(noise) else 0.0
    return w * own + (1.0 - w) * base, w


def _weekday_noise(f: F64, n_eff: F64) -> float:
    seen = np.isfinite(f)
    with np.errstate(divide="ignore"):
        return float(np.sum(np.where(seen, f**2 / np.where(seen, n_eff, 1.0), 0.0)))


class _Zone:
    """One time zone's slot offsets over the window and its local exposure grid."""

    def __init__(self, tz: str, u0: int, observed: npt.NDArray[np.bool_], until_s: float) -> None:
        d0, d1 = u0 // SLOTS, (u0 + len(observed) - 1) // SLOTS
        at = [round(utc_offset(tz, d * DAY_S) / SLOT_S) for d in range(d0, d1 + 2)]
        per_slot = np.repeat(np.asarray(at[:-1], dtype=np.int64), SLOTS)
        for i in np.flatnonzero(np.diff(at)):  # a DST change within this UTC day: offsets slot by slot
            day = (d0 + int(i)) * SLOTS
            per_slot[i * SLOTS : (i + 1) * SLOTS] = [
                round(utc_offset(tz, (day + s) * SLOT_S) / SLOT_S) for s in range(SLOTS)
            ]
        self.offset = per_slot[u0 - d0 * SLOTS : u0 - d0 * SLOTS + len(observed)]
        local = np.arange(len(observed)) + u0 + self.offset
        self.first_day = int(local.min() // SLOTS)
        n_days = int(local.max() // SLOTS) - self.first_day + 1
        grid = np.bincount(local[observed] - self.first_day * SLOTS, minlength=n_days * SLOTS)
        self.expo = grid.astype(np.float64).reshape(n_days, SLOTS)
        self.until_offset_days = utc_offset(tz, until_s) / DAY_S


def _bidder_days(zone: _Zone, u: I64, n: F64, u0: int, until_days: float, half_life: float) -> _Days:
    """A bidder's rows on its local days, from its first day with a row to its last (before it started there
    was nothing to count, which exposure alone would read as zero traffic)."""
    local = u + zone.offset[u - u0]
    first, last = int(local.min() // SLOTS), int(local.max() // SLOTS)
    n_days = last - first + 1
    # bincount with weights is float64 (its stub says intp): asarray only tells mypy so, and copies nothing
    counts = np.asarray(np.bincount(local - first * SLOTS, weights=n, minlength=n_days * SLOTS), dtype=np.float64)
    counts = counts.reshape(n_days, SLOTS)
    expo = zone.expo[first - zone.first_day : last - zone.first_day + 1]
    weight = _recency(first, n_days, until_days + zone.until_offset_days, half_life)
    return _Days(first, counts, expo, weight)


@dataclass(frozen=True)
class _Own:
    days: _Days
    shape: _Shape
    weekday: F64  # NaN for unseen weekdays
    weekday_n_eff: F64
    rows: int


def fit_traffic(
    rollup: Rollup,
    timezones: dict[str, str],
    prior: TrafficCurve,
    half_life_days: float = HALF_LIFE_DAYS,
    bandwidths: tuple[float, ...] = BANDWIDTHS,
) -> TrafficFits:
    """Fit every bidder in rollup.traffic, and the fleet (all bidders in their local time, volume-weighted)."""
    t = rollup.traffic
    u_all = np.asarray(t["day"], dtype=np.int64) * SLOTS + np.asarray(t["slot"], dtype=np.int64)
    n_all = np.asarray(t["n"], dtype=np.float64)
    rows_all = np.asarray(t["rows"], dtype=np.int64)
    groups = group_by_bidder(np.asarray(t["bidder"]))
    if not groups:
        return TrafficFits(_prior_fit(prior), {})
    u0 = int(u_all.min())
    observed = np.zeros(int(u_all.max()) - u0 + 1, dtype=bool)
    observed[u_all - u0] = True  # the fleet was logging: some bidder has a row there
    until_days = rollup.until_ms / DAY_MS
    zones: dict[str, _Zone] = {}
    own: dict[str, _Own] = {}
    levels: dict[str, tuple[float, F64]] = {}
    for bidder, idx in groups.items():
        tz = timezones.get(bidder, "UTC")
        if tz not in zones:
            zones[tz] = _Zone(tz, u0, observed, rollup.until_ms / 1000)
        zone = zones[tz]
        days = _bidder_days(zone, u_all[idx], n_all[idx], u0, until_days, half_life_days)
        rate, f, n_eff = _alternate(days)
        scaled = _Days(
            days.first_day, days.counts, days.expo * np.nan_to_num(f, nan=1.0)[days.dow][:, None], days.weight
        )
        own[bidder] = _Own(days, _smooth(scaled, bandwidths), f, n_eff, int(rows_all[idx].sum()))
        # Daily level (decisions on an average seen weekday), counting unobserved slots at the mean slot rate.
        seen = np.isfinite(rate)
        levels[bidder] = (float(np.nanmean(rate)) * SLOTS if seen.any() else 0.0, np.nan_to_num(rate))
    fleet = _fit_fleet(own, levels, zones, until_days, prior, half_life_days, bandwidths)
    return TrafficFits(fleet, {b: _shrink(o, fleet) for b, o in own.items()})


def _fit_fleet(
    own: dict[str, _Own],
    levels: dict[str, tuple[float, F64]],
    zones: dict[str, _Zone],
    until_days: float,
    prior: TrafficCurve,
    half_life: float,
    bandwidths: tuple[float, ...],
) -> TrafficFit:
    """The fleet as one bidder on absolute local days: summed counts against each bidder's expected decisions,
    so bidders weigh by volume and each keeps its own weekday pattern; then shrunk toward the prior."""
    first = min(z.first_day for z in zones.values())
    n_days = max(z.first_day + len(z.expo) for z in zones.values()) - first
    counts, expo, expected = (np.zeros((n_days, SLOTS)) for _ in range(3))
    rows, exposure = 0, 0.0
    for bidder, o in own.items():
        level, rate = levels[bidder]
        d = o.days
        sl = slice(d.first_day - first, d.first_day - first + len(d.counts))
        f = np.nan_to_num(o.weekday, nan=1.0)[d.dow][:, None]
        counts[sl] += d.counts
        expo[sl] += d.expo * f * level
        expected[sl] += d.expo * rate
        rows += o.rows
        exposure = max(exposure, float(d.expo.sum()) / SLOTS)
    weight = _recency(first, n_days, until_days, half_life)
    shape = _smooth(_Days(first, counts, expo, weight), bandwidths)
    weekday, n_eff = _weekday_rates(_Days(first, counts, expected, weight), np.ones(SLOTS))
    by_slot, w_slot = _stein(_fill(shape.rate, prior.by_slot), prior.by_slot, shape.noise)
    f_own = _fill_weekdays(weekday, prior.weekday_factor)
    factor, w_day = _stein(f_own, prior.weekday_factor, _weekday_noise(f_own, n_eff))
    decisions = float(counts.sum())
    return TrafficFit(by_slot, factor, shape.bandwidth, shape.cv_error, w_slot, w_day, exposure, decisions, rows)


def _shrink(o: _Own, fleet: TrafficFit) -> TrafficFit:
    by_slot, w_slot = _stein(_fill(o.shape.rate, fleet.by_slot), fleet.by_slot, o.shape.noise)
    f_own = _fill_weekdays(o.weekday, fleet.weekday_factor)
    factor, w_day = _stein(f_own, fleet.weekday_factor, _weekday_noise(f_own, o.weekday_n_eff))
    days = float(o.days.expo.sum()) / SLOTS
    decisions = float(o.days.counts.sum())
    return TrafficFit(by_slot, factor, o.shape.bandwidth, o.shape.cv_error, w_slot, w_day, days, decisions, o.rows)


def _prior_fit(prior: TrafficCurve) -> TrafficFit:
    return TrafficFit(prior.by_slot.copy(), prior.weekday_factor.copy(), 0.0, None, 0.0, 0.0, 0.0, 0.0, 0)
