"""Replay: the hindsight optimum and the metrics on tiny logs computed by hand, log and spec parsing, determinism,
and that replay runs the service's own engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pacer.app import create_app
from pacer.bidder_config import BidderConfig
from pacer.config import Settings
from pacer.controller import Controller, ControlParams
from pacer.curves import TrafficCurve
from pacer.engine import Engine
from pacer.periods import Flight, rfc3339
from pacer.replay.auctions import AuctionLog, LogError, read_log
from pacer.replay.metrics import bidder_metrics, metrics, optimum
from pacer.replay.run import BiddersError, ReplayOptions, load_bidders, replay
from pacer.replay.synthetic import SpecError, SyntheticSpec, generate

MODELS = Path(__file__).resolve().parents[2] / "models"
PRIOR = TrafficCurve.load(MODELS / "prior" / "traffic.json")
T0 = 1_800_000_000.0


def test_optimum_is_the_fractional_knapsack_by_value_per_cost() -> None:
    value, cost = np.array([10, 6, 4]), np.array([2, 3, 4])
    assert optimum(value, cost, 4) == pytest.approx(10 + 6 * 2 / 3)  # ratios 5, 2, 1: all of #0, 2/3 of #1
    assert optimum(value, cost, 100) == 20  # everything fits
    assert optimum(value, cost, 0) == 0
    assert optimum(np.array([7, 10]), np.array([0, 5]), 1) == pytest.approx(7 + 2)  # free auctions always count


def tiny_log(last_market: int = 3000) -> AuctionLog:
    """Four auctions in a one-hour flight: (t, bid, market)."""
    rows = [(100, 3000, 2000), (200, 1000, 1500), (1900, 5000, 4000), (3000, 6000, last_market)]
    return AuctionLog.from_columns(
        [T0 + t for t, _, _ in rows],
        ["b"] * 4,
        [f"a{i}" for i in range(4)],
        [b for _, b, _ in rows],
        [m for _, _, m in rows],
    )


def tiny_config(budget: int = 10_000) -> dict[str, BidderConfig]:
    return {"b": BidderConfig(budget, Flight(T0, T0 + 3600), "even")}


def test_metrics_on_a_tiny_log_by_hand_second_price() -> None:
    """No pacing (strategy asap) so every bid goes in whole: wins #0, #2, #3; #3 is capped by what is left."""
    result = replay(tiny_log(), tiny_config(), PRIOR, ReplayOptions(strategy="asap", win_delay_s=0.0))
    assert result.granted.tolist() == [3000, 1000, 5000, 4000]  # #3: 10000 - 6000 spent = 4000 available
    assert result.price.tolist() == [2000, 0, 4000, 3000]
    m = bidder_metrics(result, "b")
    assert result.engine.bidders["b"].ledger.spent == m["spend_micros"] == 9000
    assert m["delivery"] == 0.9 and m["overspend"] == 0.0
    assert m["value"] == 3000 + 5000 + 6000
    # opt: by value/cost #3 (2.0), #0 (1.5), #2 (1.25) cost 9000 in all; 1000 left buys 2/3 of #1.
    assert m["opt_value"] == pytest.approx(14000 + 1000 * 1000 / 1500, abs=0.1)
    assert m["value_ratio"] == pytest.approx(14000 / (14000 + 2000 / 3))
    assert m["ecpm_micros"] == 9000 * 1000 // 3
    assert m["exhausted_at"] is None  # never reached 99% of the budget
    # Twelve 5-minute slots; even target 833.33 a slot. Cumulative spend minus target at the slot edges is
    # worst at 30:00: 2000 spent against 5000.
    assert m["max_dev"] == pytest.approx(0.3)
    slots = np.zeros(12)
    slots[[0, 6, 10]] = [2000, 4000, 3000]
    per_slot = 10_000 / 12
    assert m["smooth_rmse"] == pytest.approx(np.sqrt((((slots - per_slot) / per_slot) ** 2).mean()))


def test_first_price_pays_the_granted_bid_and_exhaustion_time_is_reported() -> None:
    options = ReplayOptions(strategy="asap", auction="first", win_delay_s=0.0)
    result = replay(tiny_log(), tiny_config(), PRIOR, options)
    assert result.price.tolist() == [3000, 0, 5000, 0]  # #3: the 2000 left is granted, below the market's 3000
    assert bidder_metrics(result, "b")["spend_micros"] == 8000
    result = replay(tiny_log(last_market=1500), tiny_config(), PRIOR, options)
    assert result.price.tolist() == [3000, 0, 5000, 2000]  # now the 2000 left wins, and pays all of it
    m = bidder_metrics(result, "b")
    assert m["spend_micros"] == 10_000 and m["delivery"] == 1.0 and m["overspend"] == 0.0
    assert m["exhausted_at"] == rfc3339(T0 + 3000)


def test_replay_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    spec = SyntheticSpec.parse("bidders=2,days=0.05,auctions_per_day=100000,seed=5")
    log, bodies = generate(spec, MODELS)
    again, bodies_again = generate(spec, MODELS)
    assert bodies == bodies_again and np.array_equal(log.bid, again.bid) and np.array_equal(log.ts, again.ts)
    configs = load_bidders_from(bodies, tmp_path)
    a = replay(log, configs, PRIOR, ReplayOptions(seed=3))
    b = replay(log, configs, PRIOR, ReplayOptions(seed=3))
    assert np.array_equal(a.granted, b.granted) and np.array_equal(a.price, b.price)
    assert metrics(a) == metrics(b)


def load_bidders_from(bodies: dict[str, dict[str, object]], tmp: Path) -> dict[str, BidderConfig]:
    """Through a BIDDERS.json file, as `pacer replay --bidders` reads it."""
    path = tmp / "bidders.json"
    path.write_text(json.dumps(bodies))
    return load_bidders(path)


def test_replay_runs_the_service_engine_and_control_law(tmp_path: Path) -> None:
    """One engine module: the service and replay build the same classes with the same control parameters."""
    app = create_app(Settings(store=f"sqlite:///{tmp_path}/p.db", operator_token="t"))  # type: ignore[call-arg]
    served = app.service.engine
    result = replay(tiny_log(), tiny_config(), PRIOR, ReplayOptions(win_delay_s=0.0))
    assert type(result.engine) is type(served) is Engine
    assert type(result.engine.controller) is type(served.controller) is Controller
    assert result.engine.controller.params == served.controller.params == ControlParams()


def test_pacer_buys_more_value_than_throttling_and_delivers(tmp_path: Path) -> None:
    spec = SyntheticSpec.parse("bidders=2,days=0.25,budget_fractions=[0.1],auctions_per_day=60000,seed=2")
    log, bodies = generate(spec, MODELS)
    configs = load_bidders_from(bodies, tmp_path)
    paced = metrics(replay(log, configs, PRIOR))["bidders"]
    throttled = metrics(replay(log, configs, PRIOR, ReplayOptions(strategy="throttle")))["bidders"]
    for b in paced:
        assert 0.97 <= paced[b]["delivery"] <= 1.0 and paced[b]["overspend"] == 0.0, paced[b]
        assert paced[b]["value_ratio"] > throttled[b]["value_ratio"] + 0.1, (paced[b], throttled[b])


# --- logs, bidders and specs in, clear errors out -------------------------------------------------------------


def test_csv_with_rfc3339_and_parquet_with_epoch_ms_read_the_same(tmp_path: Path) -> None:
    log = tiny_log()
    log.write(tmp_path / "a.parquet")
    lines = ["ts,bidder_id,auction_id,bid_micros,market_micros"]
    lines += [
        f"{rfc3339(t)},b,{a},{b},{m}" for t, a, b, m in zip(log.ts, log.auction_id, log.bid, log.market, strict=True)
    ]
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    for got in (read_log(tmp_path / "a.parquet"), read_log(tmp_path / "a.csv")):
        assert got.bidders == ["b"] and got.auction_id.tolist() == log.auction_id.tolist()
        assert np.allclose(got.ts, log.ts) and got.bid.tolist() == log.bid.tolist()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ts,bidder_id,auction_id,bid_micros\n1,b,a,1\n", "missing column(s) market_micros"),
        ("ts,bidder_id,auction_id,bid_micros,market_micros\n1,b,a,-5,1\n", "column bid_micros: -5 at row 1"),
        ("ts,bidder_id,auction_id,bid_micros,market_micros\n1,b,a,1.5,1\n", "column bid_micros: integer micros"),
        ("ts,bidder_id,auction_id,bid_micros,market_micros\nyesterday,b,a,1,1\n", "column ts: 'yesterday' at row 1"),
        ("ts,bidder_id,auction_id,bid_micros,market_micros\n2027-01-01T00:00:00,b,a,1,1\n", "with an offset"),
        ("ts,bidder_id,auction_id,bid_micros,market_micros\n1,b,a,1,1\n2,,a,1,1\n", "bidder_id: empty value at row 2"),
    ],
)
def test_a_bad_log_names_the_column_and_row(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(LogError, match=None) as info:
        read_log(path)
    assert expected in str(info.value)


def test_a_corrupt_parquet_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(LogError, match="not a readable Parquet file"):
        read_log(path)


def test_bidders_file_is_validated_like_the_operator_api(tmp_path: Path) -> None:
    good = {"budget_micros": 1000, "period": {"type": "daily", "timezone": "Europe/Paris"}, "pacing": "even"}
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"x": good}))
    assert load_bidders(path)["x"].budget_micros == 1000
    for bad, where in (
        ({**good, "budget_micros": 0}, "x.budget_micros"),
        ({**good, "pace": "even"}, "x.pace"),
        ({**good, "period": {"type": "daily", "timezone": "Mars/Base"}}, "x.period.timezone"),
    ):
        path.write_text(json.dumps({"x": bad}))
        with pytest.raises(BiddersError, match=where.replace(".", r"\.")):
            load_bidders(path)


def test_a_log_with_an_unconfigured_bidder_is_refused() -> None:
    with pytest.raises(BiddersError, match="no configuration: b"):
        replay(tiny_log(), {"other": tiny_config()["b"]}, PRIOR)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("bidders=0", "spec.bidders"),
        ("shape=square", "spec.shape"),
        ("colour=red", "unknown field"),
        ("budget_fractions=[2]", "spec.budget_fractions"),
        ("start=tomorrow", "spec.start"),
        ("days=x", "spec.days"),
        ("timezone=Mars/Base", "spec.timezone"),
        ("shock=1", "spec.shock"),
    ],
)
def test_a_bad_spec_names_the_field(spec: str, field: str) -> None:
    with pytest.raises(SpecError, match=field):
        SyntheticSpec.parse(spec)


def test_synthetic_traffic_has_the_asked_shape_and_budgets() -> None:
    spec = SyntheticSpec.parse("bidders=1,days=1,shape=cosine,peak_to_trough=9,auctions_per_day=200000,seed=4")
    log, bodies = generate(spec, MODELS)
    hours = np.bincount(((log.ts - log.ts.min()) // 3600).astype(int), minlength=24)
    assert abs(len(log) - 200_000) < 2_000
    assert 7.0 < hours[11:14].mean() / hours[[23, 0, 1]].mean() < 10.0  # peak at noon, trough at midnight
    won = log.bid >= log.market
    assert bodies["b0"]["budget_micros"] == int(log.market[won].sum() / 64)  # the first fraction, 1/64


def test_shock_triples_the_ten_oclock_hour_and_raises_competing_bids_from_noon() -> None:
    base, _ = generate(SyntheticSpec.parse("bidders=1,shape=flat,auctions_per_day=100000,seed=1"), MODELS)
    shock, _ = generate(SyntheticSpec.parse("bidders=1,shape=flat,auctions_per_day=100000,seed=1,shock=true"), MODELS)

    def hourly(log: AuctionLog) -> np.ndarray:
        return np.bincount(((log.ts - T_SPEC) // 3600).astype(int), minlength=24)

    ratio = hourly(shock) / hourly(base)
    assert 2.7 < ratio[10] < 3.3 and 0.4 < ratio[14:17].mean() < 0.6 and 0.9 < ratio[18:].mean() < 1.1
    hour = (shock.ts - T_SPEC) // 3600
    assert 1.4 < np.median(shock.market[hour >= 12]) / np.median(shock.market[hour < 12]) < 1.6


T_SPEC = 1_799_625_600.0  # the spec's default start, 2027-01-11T00:00:00Z
