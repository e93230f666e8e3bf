"""Budget periods (flights, daily periods in a time zone) as epoch-second windows. Pure functions, no I/O."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_MIN_YEAR, _MAX_YEAR = 2000, 2200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# fromisoformat alone also takes ISO 8601 forms that are not RFC 3339 (basic format, week dates, no seconds).
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


class PeriodError(ValueError):
    """Bad period input. `field` is the dotted JSON path of the offending field, e.g. "period.end"."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Flight:
    """A one-off budget spread over [start, end)."""

    start: float  # epoch seconds, UTC
    end: float  # epoch seconds, > start
    timezone: str = "UTC"  # local time used only to shape 'traffic' pacing curves


@dataclass(frozen=True, slots=True)
class Daily:
    """A budget that renews at each local midnight."""

    timezone: str  # IANA name


Period = Flight | Daily


@dataclass(frozen=True, slots=True)
class Window:
    """The budget period containing an instant; spend is accounted per `key`."""

    start: float  # epoch s
    end: float  # epoch s
    key: str


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    """Cached because window_at runs for every bidder on every tick; only valid names get cached."""
    return ZoneInfo(name)


def _local_date(zone: ZoneInfo, ts: float) -> date:
    return datetime.fromtimestamp(ts, zone).date()


@lru_cache(maxsize=4096)
def _day_start(timezone: str, day: date) -> int:
    """First instant (epoch s) whose local date is `day`; bidders in one zone share it, hence the cache."""
    zone = _zone(timezone)
    midnight = datetime.combine(day, time(0), tzinfo=zone)
    late = int(midnight.timestamp())  # fold=0: in a gap this reads midnight with the pre-jump offset
    if datetime.fromtimestamp(late, zone).replace(tzinfo=None) == midnight.replace(tzinfo=None):
        return late  # midnight exists; fold=0 picks the earlier of two if it is repeated
    # Local midnight falls in a DST gap, so the day starts at the jump, which lies in (early, late].
    # Transitions are whole seconds: bisect for the first second on `day`.
    early = int(midnight.replace(fold=1).timestamp())
    while late - early > 1:
        mid = (early + late) // 2
        if _local_date(zone, mid) >= day:
            late = mid
        else:
            early = mid
    return late


def window_at(period: Period, now: float) -> Window:
    """The budget window that `now` falls in (for a flight: the flight, whatever `now` is)."""
    if isinstance(period, Flight):
        return Window(period.start, period.end, f"flight:{int(period.start)}")
    # Floor first: fromtimestamp rounds to the microsecond, which would push 23:59:59.9999999 into tomorrow;
    # day boundaries are whole seconds, so the floor has the same local date as `now`.
    day = _local_date(_zone(period.timezone), math.floor(now))
    start, end = _day_start(period.timezone, day), _day_start(period.timezone, day + timedelta(days=1))
    if now >= end:
        # Clocks went back across midnight just after it (e.g. 00:01 -> 23:01, Canada until 2010), so the
        # local date briefly reads yesterday again; that hour belongs to the day that had already begun.
        day += timedelta(days=1)
        start, end = end, _day_start(period.timezone, day + timedelta(days=1))
    return Window(float(start), float(end), f"daily:{day.isoformat()}")


def _parse_zone(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise PeriodError(field, "must be an IANA time zone name such as 'America/New_York'")
    try:
        _zone(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: directory names such as "America"
        raise PeriodError(field, f"unknown time zone {value!r}") from None
    return value


def parse_rfc3339(value: object) -> datetime | None:
    """The one RFC 3339 parser (periods, log timestamps, --since, models, replay specs): a date and time with seconds
    and an explicit offset (Z or +hh:mm); None for anything else, ISO 8601 forms RFC 3339 excludes included."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:  # the shape is right but the date is not (2026-02-30)
        return None


def _parse_instant(value: object, field: str) -> float:
    """RFC 3339 with an explicit offset -> epoch s, rounded to the ms so period_to_json round-trips."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise PeriodError(field, "must be an RFC 3339 time with offset, e.g. '2026-11-24T00:00:00Z'")
    dt = parse_rfc3339(value)
    if dt is None:
        raise PeriodError(field, f"invalid date or time {value!r}")
    if not _MIN_YEAR <= dt.year <= _MAX_YEAR:
        raise PeriodError(field, f"year out of range ({_MIN_YEAR}..{_MAX_YEAR})")
    micros = (dt - _EPOCH) // timedelta(microseconds=1)  # exact integer arithmetic, no float drift
    return ((micros + 500) // 1000) / 1000


def _check_keys(obj: dict[object, object], allowed: tuple[str, ...], field: str) -> None:
    for key in obj:
        if key not in allowed:
            raise PeriodError(f"{field}.{key}", "unknown field")


def parse_period(obj: object, field: str = "period") -> Period:
    """Parse the JSON value of a period; every error names the offending field."""
    if not isinstance(obj, dict):
        raise PeriodError(field, "must be an object")
    kind = obj.get("type")
    if kind == "flight":
        _check_keys(obj, ("type", "start", "end", "timezone"), field)
        start = _parse_instant(obj.get("start"), f"{field}.start")
        end = _parse_instant(obj.get("end"), f"{field}.end")
        if end <= start:
            raise PeriodError(f"{field}.end", "must be after start")
        return Flight(start, end, _parse_zone(obj.get("timezone", "UTC"), f"{field}.timezone"))
    if kind == "daily":
        _check_keys(obj, ("type", "timezone"), field)
        return Daily(_parse_zone(obj.get("timezone"), f"{field}.timezone"))
    raise PeriodError(f"{field}.type", "must be 'flight' or 'daily'")


def period_to_json(period: Period) -> dict[str, object]:
    """Inverse of parse_period."""
    if isinstance(period, Flight):
        return {
            "type": "flight",
            "start": rfc3339(period.start),
            "end": rfc3339(period.end),
            "timezone": period.timezone,
        }
    return {"type": "daily", "timezone": period.timezone}


def rfc3339(ts: float) -> str:
    """UTC with Z; milliseconds only when there is a fraction, so whole-second times stay short."""
    millis = round(ts * 1000)
    seconds, frac = divmod(millis, 1000)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:03d}Z" if frac else f"{text}Z"


def utc_offset(timezone: str, ts: float) -> float:
    """Seconds east of UTC at instant `ts` (DST aware)."""
    offset = datetime.fromtimestamp(ts, _zone(timezone)).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0  # None never happens for a ZoneInfo
