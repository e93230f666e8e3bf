"""bidder_config.py: what an operator sets for a bidder, and the names every layer shares: pacing modes, decision
reasons and bidder states, each defined here once. `BidderIn` validates a PUT body (pydantic, the operator API's
and replay's one definition of a valid bidder); its JSON form is what the stores keep. No I/O, no FastAPI: the
engine, the service, replay and the HTTP layer all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, get_args
from zoneinfo import available_timezones

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

from pacer.periods import Period, parse_period, period_to_json

MAX_MICROS = 10**12  # $1M per impression: far above any real price, far below int64 overflow in sums
MAX_BUDGET = 10**15  # $1B in micros: beyond any real budget, far from int64 overflow

Pacing = Literal["asap", "even", "frontload", "traffic"]
PACING_MODES: tuple[Pacing, ...] = get_args(Pacing)

# Why a bid was not granted (POST /v1/bid's `reason`).
Reason = Literal["paced", "exhausted", "paused", "not_active", "unknown_bidder", "no_budget", "budget_unknown"]
REASONS: tuple[Reason, ...] = get_args(Reason)
PACED, EXHAUSTED, PAUSED, NOT_ACTIVE, UNKNOWN_BIDDER, NO_BUDGET, BUDGET_UNKNOWN = REASONS

# A bidder's state in its status (store_lost: a fleet store lost its spend).
State = Literal["scheduled", "active", "paused", "exhausted", "ended", "store_lost"]
STATES: tuple[State, ...] = get_args(State)


@dataclass(frozen=True, slots=True)
class BidderConfig:
    """What the operator set for a bidder (the body of PUT /v1/bidders/{id}, plus `paused`)."""

    budget_micros: int
    period: Period
    pacing: str = "even"
    max_bid_micros: int | None = None
    paused: bool = False


def config_to_json(config: BidderConfig) -> dict[str, object]:
    return {
        "budget_micros": config.budget_micros,
        "period": period_to_json(config.period),
        "pacing": config.pacing,
        "max_bid_micros": config.max_bid_micros,
        "paused": config.paused,
    }


def config_from_json(doc: dict[str, object]) -> BidderConfig:
    budget, cap = doc["budget_micros"], doc.get("max_bid_micros")
    assert isinstance(budget, int) and (cap is None or isinstance(cap, int))
    return BidderConfig(
        budget_micros=budget,
        period=parse_period(doc["period"]),
        pacing=str(doc.get("pacing", "even")),
        max_bid_micros=cap,
        paused=bool(doc.get("paused", False)),
    )


# --- a PUT body, validated (the operator API documents these in /openapi.json) -------------------------------

# Documented, not validated here: parse_period checks them (and names the field in its error). An instant is
# RFC 3339 in the years 2000..2200 (periods.py).
INSTANT: JsonDict = {"format": "date-time", "pattern": "^(2[01][0-9]{2}|2200)-"}


@cache
def _zones() -> list[str]:
    return sorted(available_timezones())


def _iana_zone(schema: dict[str, Any]) -> None:
    schema["enum"] = _zones()  # exactly the names this process can load (the OS's zones, else tzdata's)


def _whole(value: object) -> object:
    """An integral float is that integer (5.0 -> 5): JSON does not tell them apart, and JSON Schema's `integer`
    admits 5.0. Anything else goes on to the strict int, which refuses 5.5, "5" and true."""
    return int(value) if type(value) is float and value.is_integer() else value


class FlightIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["flight"]
    start: str = Field(
        description="RFC 3339 with offset, e.g. 2026-11-24T00:00:00Z; years 2000..2200", json_schema_extra=INSTANT
    )
    end: str = Field(description="RFC 3339 with offset; after start", json_schema_extra=INSTANT)
    timezone: str = Field(
        "UTC", description="IANA zone whose local day shapes `traffic` pacing", json_schema_extra=_iana_zone
    )


class DailyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["daily"]
    timezone: str = Field(
        description="IANA zone; the budget renews at each local midnight (DST-correct)", json_schema_extra=_iana_zone
    )


PeriodIn = Annotated[FlightIn | DailyIn, Field(discriminator="type")]
Whole = BeforeValidator(_whole)  # after the bounds: the bounds then stay the int's, in the JSON Schema too
BudgetMicros = Annotated[int, Field(gt=0, le=MAX_BUDGET), Whole]
BidCap = Annotated[int, Field(gt=0, le=MAX_MICROS), Whole]


class BidderIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    budget_micros: BudgetMicros
    period: PeriodIn
    pacing: Pacing = "even"
    max_bid_micros: BidCap | None = None
