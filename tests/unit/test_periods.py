"""Budget periods: windows, DST edges, tiling, JSON parsing and round trips."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacer.periods import (
    Daily,
    Flight,
    PeriodError,
    Window,
    parse_period,
    parse_rfc3339,
    period_to_json,
    rfc3339,
    utc_offset,
    window_at,
)
from pacer.refit.job import parse_since

TILING_ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Havana",  # spring-forward at midnight
    "America/Santiago",  # spring-forward at midnight
    "Asia/Kathmandu",  # +05:45
]


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def assert_tiles(period: Daily, now: float) -> Window:
    w = window_at(period, now)
    assert w.start <= now < w.end
    assert window_at(period, w.end).start == w.end  # no gap, no overlap with the next day
    assert window_at(period, w.start - 0.001).end == w.start  # nor with the previous one
    assert window_at(period, w.start) == w
    return w


# --- flights -------------------------------------------------------------------------------------------


def test_flight_window_ignores_now() -> None:
    flight = Flight(1795478400.0, 1796083200.0)
    expected = Window(1795478400.0, 1796083200.0, "flight:1795478400")
    for now in (0.0, 1795478399.0, 1795478400.0, 1795800000.0, 1796083200.0, 2e9):
        assert window_at(flight, now) == expected


def test_flight_key_uses_whole_seconds() -> None:
    assert window_at(Flight(1795478400.75, 1796083200.0, "Europe/Paris"), 0).key == "flight:1795478400"


# --- daily windows -------------------------------------------------------------------------------------


def test_daily_utc() -> None:
    w = window_at(Daily("UTC"), 1767225600.0 + 12 * 3600)
    assert w == Window(1767225600.0, 1767312000.0, "daily:2026-01-01")


def test_daily_window_bounds_are_inclusive_exclusive() -> None:
    assert window_at(Daily("UTC"), 1767225600.0).key == "daily:2026-01-01"
    assert window_at(Daily("UTC"), 1767312000.0).key == "daily:2026-01-02"
    assert window_at(Daily("UTC"), 1767311999.999).key == "daily:2026-01-01"
    # Closer to midnight than a microsecond: must not be rounded into the next day.
    assert window_at(Daily("UTC"), 1767311999.9999998).key == "daily:2026-01-01"


def test_new_york_spring_forward_is_23_hours() -> None:
    w = window_at(Daily("America/New_York"), ts("2026-03-08T12:00:00-04:00"))
    assert w == Window(1772946000.0, 1773028800.0, "daily:2026-03-08")
    assert w.end - w.start == 82800


def test_new_york_fall_back_is_25_hours() -> None:
    w = window_at(Daily("America/New_York"), ts("2026-11-01T12:00:00-05:00"))
    assert w == Window(1793505600.0, 1793595600.0, "daily:2026-11-01")
    assert w.end - w.start == 90000


def test_local_date_not_utc_date_picks_the_day() -> None:
    # 03:00Z on the 2nd is still the 1st in New York.
    assert window_at(Daily("America/New_York"), ts("2026-01-02T03:00:00Z")).key == "daily:2026-01-01"
    assert window_at(Daily("Asia/Kathmandu"), ts("2026-01-01T20:00:00Z")).key == "daily:2026-01-02"


@pytest.mark.parametrize(
    ("zone", "first_instant"),
    [
        ("America/Havana", "2026-03-08T05:00:00Z"),  # 00:00 CST -> 01:00 CDT
        ("America/Santiago", "2026-09-06T04:00:00Z"),  # 00:00 -04 -> 01:00 -03
    ],
)
def test_midnight_gap_day_starts_at_the_jump(zone: str, first_instant: str) -> None:
    jump = ts(first_instant)
    day = first_instant[:10]
    w = assert_tiles(Daily(zone), jump + 3600)
    assert (w.start, w.key) == (jump, f"daily:{day}")
    assert w.end - w.start == 82800
    before = window_at(Daily(zone), jump - 1)
    assert before.end == jump
    assert before.key < w.key


def test_gap_straddling_midnight_is_found_by_bisection() -> None:
    # Toronto 1919-03-30 23:30 EST -> 00:30 EDT: the day starts at local 00:30, which a naive
    # midnight-with-pre-jump-offset conversion would put 30 minutes too late.
    jump = ts("1919-03-31T04:30:00Z")
    w = assert_tiles(Daily("America/Toronto"), jump + 60)
    assert (w.start, w.key) == (jump, "daily:1919-03-31")
    assert window_at(Daily("America/Toronto"), jump - 1).end == jump


def test_clocks_back_just_after_midnight_stay_in_the_new_day() -> None:
    # Goose Bay 2008-11-02 00:01 ADT -> 23:01 AST: local date reads the 1st again for an hour.
    start = ts("2008-11-02T03:00:00Z")
    w = assert_tiles(Daily("America/Goose_Bay"), start + 1800)  # local 23:30 AST on the 1st
    assert (w.start, w.key) == (start, "daily:2008-11-02")
    assert w.end - w.start == 90000


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(TILING_ZONES),
    now=st.floats(min_value=ts("2024-01-01T00:00:00Z"), max_value=ts("2030-12-31T00:00:00Z")),
)
def test_windows_tile_time(zone: str, now: float) -> None:
    w = assert_tiles(Daily(zone), now)
    assert 82800 <= w.end - w.start <= 90000


@pytest.mark.parametrize("zone", TILING_ZONES)
def test_every_day_2024_to_2030_tiles(zone: str) -> None:
    # Random instants rarely land on a DST day; walk every one.
    period = Daily(zone)
    w = window_at(period, ts("2024-01-01T12:00:00Z"))
    while w.start < ts("2031-01-01T00:00:00Z"):
        nxt = window_at(period, w.end)
        assert nxt.start == w.end
        assert nxt.key > w.key
        assert 82800 <= nxt.end - nxt.start <= 90000
        w = nxt


# --- parsing -------------------------------------------------------------------------------------------

FLIGHT = {"type": "flight", "start": "2026-11-24T00:00:00Z", "end": "2026-12-01T00:00:00Z"}


def test_parse_flight_defaults_to_utc() -> None:
    assert parse_period(FLIGHT) == Flight(1795478400.0, 1796083200.0, "UTC")


def test_parse_flight_offsets_fractions_and_timezone() -> None:
    period = parse_period(
        {
            "type": "flight",
            "start": "2026-11-24T02:00:00+02:00",
            "end": "2026-12-01T00:00:00.250z",
            "timezone": "Europe/Berlin",
        }
    )
    assert period == Flight(1795478400.0, 1796083200.25, "Europe/Berlin")


def test_parse_rounds_to_milliseconds() -> None:
    period = parse_period({**FLIGHT, "start": "2026-11-24T00:00:00.0004999Z"})
    assert isinstance(period, Flight)
    assert period.start == 1795478400.0


def test_parse_daily() -> None:
    assert parse_period({"type": "daily", "timezone": "America/New_York"}) == Daily("America/New_York")


BAD_PERIODS: list[tuple[object, str]] = [
    (None, "period"),
    ([], "period"),
    ("daily", "period"),
    ({}, "period.type"),
    ({"type": "weekly"}, "period.type"),
    ({"type": 1}, "period.type"),
    ({"type": "Daily", "timezone": "UTC"}, "period.type"),
    ({"type": "daily", "timezone": "UTC", "budget": 5}, "period.budget"),
    ({**FLIGHT, "tz": "UTC"}, "period.tz"),
    ({"type": "daily", "timezone": "UTC", "start": FLIGHT["start"]}, "period.start"),
    ({"type": "flight", "end": FLIGHT["end"]}, "period.start"),
    ({"type": "flight", "start": FLIGHT["start"]}, "period.end"),
    ({**FLIGHT, "start": 1795478400}, "period.start"),
    ({**FLIGHT, "start": None}, "period.start"),
    ({**FLIGHT, "start": "2026-11-24T00:00:00"}, "period.start"),  # naive
    ({**FLIGHT, "start": "2026-11-24"}, "period.start"),
    ({**FLIGHT, "start": "2026-11-24T00:00Z"}, "period.start"),
    ({**FLIGHT, "start": "20261124T000000Z"}, "period.start"),
    ({**FLIGHT, "start": "2026-11-24 00:00:00Z"}, "period.start"),
    ({**FLIGHT, "start": "2026-11-24T00:00:00+0200"}, "period.start"),
    ({**FLIGHT, "start": "2026-13-24T00:00:00Z"}, "period.start"),
    ({**FLIGHT, "start": "2026-11-24T24:00:00Z"}, "period.start"),
    ({**FLIGHT, "start": "yesterday"}, "period.start"),
    ({**FLIGHT, "start": ""}, "period.start"),
    ({**FLIGHT, "start": "1999-12-31T23:59:59Z"}, "period.start"),
    ({**FLIGHT, "end": "2201-01-01T00:00:00Z"}, "period.end"),
    ({**FLIGHT, "end": "9999-12-31T23:59:59Z"}, "period.end"),
    ({**FLIGHT, "end": "2026-11-24T00:00Z"}, "period.end"),
    ({**FLIGHT, "end": FLIGHT["start"]}, "period.end"),
    ({**FLIGHT, "end": "2026-11-23T00:00:00Z"}, "period.end"),
    ({**FLIGHT, "end": "2026-11-24T02:00:00+02:00"}, "period.end"),  # same instant as start
    ({**FLIGHT, "timezone": "Mars/Olympus"}, "period.timezone"),
    ({**FLIGHT, "timezone": None}, "period.timezone"),
    ({"type": "daily"}, "period.timezone"),
    ({"type": "daily", "timezone": ""}, "period.timezone"),
    ({"type": "daily", "timezone": "../etc"}, "period.timezone"),
    ({"type": "daily", "timezone": "/etc/passwd"}, "period.timezone"),
    ({"type": "daily", "timezone": "America"}, "period.timezone"),  # a directory, not a zone
    ({"type": "daily", "timezone": "nul\x00byte"}, "period.timezone"),
    ({"type": "daily", "timezone": 5}, "period.timezone"),
]


@pytest.mark.parametrize(("obj", "field"), BAD_PERIODS)
def test_parse_errors_name_the_field(obj: object, field: str) -> None:
    with pytest.raises(PeriodError) as info:
        parse_period(obj)
    assert info.value.field == field
    assert info.value.message
    assert isinstance(info.value, ValueError)


def test_parse_error_uses_callers_field_prefix() -> None:
    with pytest.raises(PeriodError) as info:
        parse_period({"type": "daily", "timezone": "Nowhere"}, field="bidders[3].period")
    assert info.value.field == "bidders[3].period.timezone"


# --- round trip and formatting -------------------------------------------------------------------------


def test_period_to_json() -> None:
    assert period_to_json(Flight(1795478400.0, 1796083200.0)) == {**FLIGHT, "timezone": "UTC"}
    assert period_to_json(Daily("America/New_York")) == {"type": "daily", "timezone": "America/New_York"}


@given(
    start_ms=st.integers(int(ts("2000-01-01T00:00:00Z")) * 1000, int(ts("2190-01-01T00:00:00Z")) * 1000),
    length_ms=st.integers(1, 10**11),  # up to ~3 years, so end stays before 2200
    zone=st.sampled_from(TILING_ZONES),
)
def test_flight_round_trip(start_ms: int, length_ms: int, zone: str) -> None:
    flight = Flight(start_ms / 1000, (start_ms + length_ms) / 1000, zone)
    assert parse_period(period_to_json(flight)) == flight


@pytest.mark.parametrize("zone", TILING_ZONES)
def test_daily_round_trip(zone: str) -> None:
    assert parse_period(period_to_json(Daily(zone))) == Daily(zone)


def test_rfc3339() -> None:
    assert rfc3339(1795478400) == "2026-11-24T00:00:00Z"
    assert rfc3339(1795478400.0) == "2026-11-24T00:00:00Z"
    assert rfc3339(1795478400.5) == "2026-11-24T00:00:00.500Z"
    assert rfc3339(1795478400.123) == "2026-11-24T00:00:00.123Z"
    assert rfc3339(1795478399.9996) == "2026-11-24T00:00:00Z"  # rounds, never truncates
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_utc_offset() -> None:
    assert utc_offset("America/New_York", ts("2026-07-01T12:00:00Z")) == -4 * 3600
    assert utc_offset("America/New_York", ts("2026-01-15T12:00:00Z")) == -5 * 3600
    assert utc_offset("Asia/Kathmandu", ts("2026-01-15T12:00:00Z")) == 5 * 3600 + 45 * 60
    assert utc_offset("Australia/Lord_Howe", ts("2026-01-15T12:00:00Z")) == 11 * 3600
    assert utc_offset("Australia/Lord_Howe", ts("2026-07-15T12:00:00Z")) == 10.5 * 3600
    assert utc_offset("UTC", 0) == 0


def test_one_rfc3339_parser_for_every_timestamp() -> None:
    """Issue 14: periods, log timestamps, --since, models and replay specs all take what this takes."""
    for good in ("2026-11-24T08:00:00Z", "2026-11-24t08:00:00.5+01:00", "2026-11-24T08:00:00-05:30"):
        assert parse_rfc3339(good) is not None, good
    for bad in (
        "2026-11-24",
        "2026-11-24T08:00Z",
        "2026-11-24T08:00:00",
        "20261124T080000Z",
        "2026-W48-2T08:00:00Z",
        "2026-02-30T00:00:00Z",
        5,
        None,
    ):
        assert parse_rfc3339(bad) is None, bad
    assert parse_since("2026-11-24T08:00:00Z", 0.0) == parse_rfc3339("2026-11-24T08:00:00Z").timestamp()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="--since"):
        parse_since("2026-11-24T08:00:00", 0.0)  # no offset: refused, as a period's instants are
