"""synthetic.py: auction logs with a known shape, for replays and the pacing-quality benchmark.

Per bidder, per minute, a Poisson number of auctions whose rate follows a diurnal shape: a cosine, the shipped
prior (built from real hourly traffic shares), or one real region's own hourly shape (up to 26x night to peak).
Values and competing bids are lognormal. Budgets are a fraction of what the bidder would spend unpaced. The
"shock" scenario hits the first day with traffic x3 for an hour, -50% for three hours and competing bids x1.5
from noon: what a pacer must absorb without knowing it in advance.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pacer.bidder_config import PACING_MODES
from pacer.curves import SLOTS, TrafficCurve
from pacer.periods import PeriodError, parse_period, parse_rfc3339, rfc3339, utc_offset
from pacer.replay.auctions import AuctionLog

F64 = npt.NDArray[np.float64]
MINUTES = 1440
SHAPES = ("cosine", "prior", "regions", "flat")
FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


class SpecError(ValueError):
    """A synthetic spec that cannot be generated; names the field."""


@dataclass(frozen=True)
class SyntheticSpec:
    bidders: int = 12
    days: float = 1.0
    start: str = "2027-01-11T00:00:00Z"  # a Monday, local midnight in UTC
    timezone: str = "UTC"
    shape: str = "prior"
    peak_to_trough: float = 9.0  # cosine only
    peak_hour: float = 12.0  # cosine only
    auctions_per_day: float = 20_000.0  # per bidder, on an average day
    value_median: float = 2_000.0  # micros (a $2 CPM)
    value_sigma: float = 0.6
    market_median: float = 2_000.0
    market_sigma: float = 0.6
    budget_fractions: tuple[float, ...] = FRACTIONS  # of unpaced spend, cycled over bidders
    auction: str = "second"  # budgets are fractions of the unpaced spend under this auction
    shock: bool = False
    pacing: str = "traffic"
    period: str = "flight"  # one flight over all days, or "daily" budgets
    seed: int = 1

    @classmethod
    def parse(cls, text: str) -> SyntheticSpec:
        """A JSON file, a JSON object, or `key=value,key=value` (e.g. `bidders=6,days=1,shock=true`)."""
        text = text.strip()
        path = Path(text)
        if not text.startswith("{") and path.suffix == ".json":
            if not path.is_file():
                raise SpecError(f"spec: {path}: no such file")
            text = path.read_text()
        if text.startswith("{"):
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecError(f"spec: not valid JSON: {exc}") from exc
        else:
            doc = {}
            for part in filter(None, text.split(",")):
                key, sep, value = part.partition("=")
                if not sep:
                    raise SpecError(f"spec: {part!r} is not key=value")
                try:
                    doc[key.strip()] = json.loads(value)
                except json.JSONDecodeError:
                    doc[key.strip()] = value.strip()
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> SyntheticSpec:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise SpecError(f"spec: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values: dict[str, object] = {}
        for key, value in doc.items():
            default = getattr(cls, key)
            if isinstance(default, tuple):
                if not isinstance(value, list) or not value:
                    raise SpecError(f"spec.{key}: a non-empty list expected")
                value = tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise SpecError(f"spec.{key}: true or false expected")
            elif isinstance(default, int | float) and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise SpecError(f"spec.{key}: a number expected")
            elif isinstance(default, str) and not isinstance(value, str):
                raise SpecError(f"spec.{key}: a string expected")
            # an int field's value already passed the number check above: the last isinstance only narrows it for mypy
            values[key] = (
                int(value)
                if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, int | float)
                else value
            )
        spec = cls(**values)  # type: ignore[arg-type]
        spec.validate()
        return spec

    def validate(self) -> None:
        checks = (
            ("bidders", 1 <= self.bidders <= 10_000, "1..10000"),
            ("days", 0 < self.days <= 31, "in (0, 31]"),
            ("shape", self.shape in SHAPES, f"one of {', '.join(SHAPES)}"),
            ("peak_to_trough", self.peak_to_trough >= 1, ">= 1"),
            ("auctions_per_day", 0 < self.auctions_per_day <= 10**7, "in (0, 1e7]"),
            ("value_median", self.value_median >= 1, ">= 1"),
            ("market_median", self.market_median >= 1, ">= 1"),
            ("value_sigma", 0 <= self.value_sigma <= 3, "0..3"),
            ("market_sigma", 0 <= self.market_sigma <= 3, "0..3"),
            ("budget_fractions", all(0 < f <= 1 for f in self.budget_fractions), "each in (0, 1]"),
            ("auction", self.auction in ("first", "second"), "first or second"),
            ("pacing", self.pacing in PACING_MODES, ", ".join(PACING_MODES[:-1]) + f" or {PACING_MODES[-1]}"),
            ("period", self.period in ("flight", "daily"), "flight or daily"),
        )
        for name, ok, want in checks:
            if not ok:
                raise SpecError(f"spec.{name}: {getattr(self, name)!r} is not {want}")
        start = parse_rfc3339(self.start)
        if start is None:
            raise SpecError(f"spec.start: {self.start!r} is not RFC 3339 with an offset, e.g. 2027-01-11T00:00:00Z")
        try:
            parse_period({"type": "daily", "timezone": self.timezone})
        except PeriodError as exc:
            raise SpecError(f"spec.timezone: {exc}") from exc

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["budget_fractions"] = list(self.budget_fractions)
        return doc


def _start_epoch(spec: SyntheticSpec) -> float:
    start = parse_rfc3339(spec.start)
    assert start is not None  # SyntheticSpec.check refused anything else
    return start.timestamp()


def region_shapes(csv_path: Path) -> dict[str, F64]:
    """Per region, the share of its week's auctions by (weekday Monday first, hour): shape (7, 24), sum 1."""
    out: dict[str, F64] = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            grid = out.setdefault(row["region_id"], np.zeros((7, 24)))
            grid[int(row["dow"]) - 1, int(row["hour"])] += float(row["traffic_share"])
    return {k: v / v.sum() for k, v in sorted(out.items())}


def minute_rates(spec: SyntheticSpec, prior: TrafficCurve, region: F64 | None, offset_s: float) -> F64:
    """Expected auctions per minute for every minute of the log, before shocks (mean day = auctions_per_day)."""
    minutes = np.arange(math.ceil(spec.days * MINUTES))
    local = _start_epoch(spec) + offset_s + minutes * 60.0 + 30.0
    day = np.floor(local / 86400.0)
    minute_of_day = (local - day * 86400.0) / 60.0
    dow = ((day.astype(np.int64) + 3) % 7).astype(np.int64)  # 1970-01-01 was a Thursday; Monday = 0
    shape: F64
    if spec.shape == "flat":
        shape = np.ones_like(minute_of_day)
    elif spec.shape == "cosine":
        a = (spec.peak_to_trough - 1) / (spec.peak_to_trough + 1)
        shape = 1 + a * np.cos(2 * np.pi * (minute_of_day / 60.0 - spec.peak_hour) / 24.0)
    elif spec.shape == "prior":
        slot = np.minimum((minute_of_day / 5).astype(np.int64), SLOTS - 1)
        shape = prior.by_slot[slot] * SLOTS * prior.weekday_factor[dow]
    else:
        assert region is not None
        shape = region[dow, (minute_of_day // 60).astype(np.int64)] * 7 * 24
    return shape * spec.auctions_per_day / MINUTES


def generate(spec: SyntheticSpec, models_dir: Path) -> tuple[AuctionLog, dict[str, dict[str, object]]]:
    """The log and the bidders (PUT /v1/bidders bodies). Deterministic for a spec (seed included)."""
    rng = np.random.default_rng(spec.seed)
    prior = TrafficCurve.load(models_dir / "prior" / "traffic.json")
    regions = region_shapes(models_dir / "prior" / "traffic_share.csv") if spec.shape == "regions" else {}
    region_ids = list(regions)
    t0 = _start_epoch(spec)
    end = t0 + spec.days * 86400.0
    offset = utc_offset(spec.timezone, t0)
    cols: dict[str, list[npt.NDArray[np.generic]]] = {k: [] for k in ("ts", "bidder", "aid", "bid", "market")}
    bidders: dict[str, dict[str, object]] = {}
    width = len(str(spec.bidders - 1))
    for b in range(spec.bidders):
        name = f"b{b:0{width}d}"
        region = regions[region_ids[int(rng.integers(len(region_ids)))]] if regions else None
        rates = minute_rates(spec, prior, region, offset)
        local_minute = (np.arange(rates.shape[0]) + (t0 + offset) / 60.0) % MINUTES
        market_scale = np.ones_like(rates)
        if spec.shock:  # first local day: x3 10:00-11:00, -50% 14:00-17:00, competing bids x1.5 from noon
            first_day = np.arange(rates.shape[0]) < MINUTES
            rates = rates * np.where(first_day & (local_minute >= 600) & (local_minute < 660), 3.0, 1.0)
            rates = rates * np.where(first_day & (local_minute >= 840) & (local_minute < 1020), 0.5, 1.0)
            market_scale = np.where(local_minute >= 720, 1.5, 1.0)
        counts = rng.poisson(rates)
        n = int(counts.sum())
        minute = np.repeat(np.arange(rates.shape[0]), counts)
        ts = t0 + (minute + rng.random(n)) * 60.0
        keep = ts < end
        value = np.maximum(rng.lognormal(math.log(spec.value_median), spec.value_sigma, n), 1).astype(np.int64)
        market = rng.lognormal(math.log(spec.market_median), spec.market_sigma, n) * market_scale[minute]
        market = np.maximum(market, 1).astype(np.int64)
        ts, value, market = ts[keep], value[keep], market[keep]
        won = value >= market
        unpaced = int((market[won] if spec.auction == "second" else value[won]).sum())
        fraction = spec.budget_fractions[b % len(spec.budget_fractions)]
        period: dict[str, object]
        if spec.period == "flight":
            period = {"type": "flight", "start": rfc3339(t0), "end": rfc3339(end), "timezone": spec.timezone}
            budget = unpaced * fraction
        else:
            period = {"type": "daily", "timezone": spec.timezone}
            budget = unpaced * fraction / spec.days
        bidders[name] = {"budget_micros": max(int(budget), 1), "period": period, "pacing": spec.pacing}
        cols["ts"].append(ts)
        cols["bidder"].append(np.full(ts.shape[0], name, dtype=object))
        cols["aid"].append(np.array([f"{name}-{i}" for i in range(ts.shape[0])], dtype=object))
        cols["bid"].append(value)
        cols["market"].append(market)
    log = AuctionLog.from_columns(
        np.concatenate(cols["ts"]),
        np.concatenate(cols["bidder"]),
        np.concatenate(cols["aid"]),
        np.concatenate(cols["bid"]),
        np.concatenate(cols["market"]),
    )
    return log, bidders
