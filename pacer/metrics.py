"""metrics.py: counters and latency histograms, exported in Prometheus text format at scrape time.

The hot path pays a list increment per request; prometheus_client's own metric objects (a lock per update)
are used only at scrape time, through a collector that reads these plain numbers and the engine's counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pacer.bidder_config import STATES

if TYPE_CHECKING:
    from pacer.auctionlog import AuctionLogWriter
    from pacer.fleet import Fleet
    from pacer.service import Service

# Seconds; dense below 2 ms, where the bid path's goal lies.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)
# Background loops (a tick, a sync) and how late the event loop runs a timer: 1 ms to 10 s.
LOOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Histogram:
    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count at or below it) per bucket, +Inf last: Prometheus's form."""
        total, out = 0, []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            out.append((str(bound) if bound != float("inf") else "+Inf", total))
        return out


class HttpMetrics:
    """Per-route latency and per-(route, status) counts, filled by the ASGI layer."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.requests: Counter[tuple[str, int]] = Counter()

    def observe(self, route: str, status: int, seconds: float) -> None:
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = Histogram()
        hist.observe(seconds)
        self.requests[route, status] += 1


class PacerCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        e = service.engine
        decisions = CounterMetricFamily("pacer_decisions", "Bid decisions by outcome", labels=["reason"])
        for reason, n in e.decisions.items():
            decisions.add_metric([reason], n)
        yield decisions
        events = CounterMetricFamily("pacer_events", "Win/loss notices accepted", labels=["type"])
        events.add_metric(["win"], e.wins)
        events.add_metric(["loss"], e.losses)
        events.add_metric(["duplicate"], e.duplicates)
        yield events
        yield CounterMetricFamily("pacer_late_wins", "Wins with no open reservation", value=e.late_wins)
        yield CounterMetricFamily("pacer_expired_micros", "Reserved micros freed by expiry", value=e.expired_micros)
        totals = e.totals()  # from the tick's columns: no walk over every bidder
        for name, helptext, value in (
            ("pacer_budget_micros", "Budgets of the current periods, summed", totals.budget),
            ("pacer_spent_micros", "Spend in the current periods, summed", totals.spent),
            ("pacer_reserved_micros", "Open reservations, summed", totals.reserved),
            ("pacer_reservation_ttl_seconds", "Current reservation TTL", e.delays.ttl),
        ):
            yield GaugeMetricFamily(name, helptext, value=value)
        states = GaugeMetricFamily("pacer_bidders", "Bidders by state", labels=["state"])
        counts = totals.states
        for state in STATES:
            states.add_metric([state], counts[state])
        yield states
        yield GaugeMetricFamily(
            "pacer_store_lost_bidders",
            "Bidders whose spend the fleet store lost (not granting)",
            value=counts["store_lost"],
        )
        if service.fleet is not None:
            yield from _fleet_metrics(service.fleet)
        if service.log is not None:
            yield from _log_metrics(service.log)
        refits = CounterMetricFamily("pacer_refits", "Refit runs started here, by result", labels=["result"])
        for result, n in service.refits.items():
            refits.add_metric([result], n)
        yield refits
        yield GaugeMetricFamily("pacer_fitted_bidders", "Bidders pacing by a fitted model", value=totals.fitted)
        yield CounterMetricFamily(
            "pacer_models_refused", "Published models refused here (failed validation)", value=service.model_errors
        )
        background = CounterMetricFamily(
            "pacer_background_errors", "Exceptions a background loop survived", labels=["loop"]
        )
        for loop in ("tick", "sync", "lag", "relay", "log", "refit"):
            background.add_metric([loop], service.background_errors.get(loop, 0))
        yield background
        errors = CounterMetricFamily("pacer_store_errors", "Store operations that failed", labels=["op"])
        for op, n in service.store_errors.items():
            errors.add_metric([op], n)
        yield errors
        requests = CounterMetricFamily("pacer_requests", "HTTP requests", labels=["route", "status"])
        for (route, status), n in service.http.requests.items():
            requests.add_metric([route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("pacer_request_duration_seconds", "Request latency", labels=["route"])
        for route, hist in service.http.latency.items():
            latency.add_metric([route], hist.cumulative(), hist.total)
        yield latency
        for name, helptext, hist in (
            ("pacer_tick_seconds", "Wall time of one pacing tick, yields to bids included", service.tick_seconds),
            (
                "pacer_sync_seconds",
                "Wall time of one sync with the store (fleet sync or snapshot)",
                service.sync_seconds,
            ),
            (
                "pacer_event_loop_lag_seconds",
                "How late the event loop ran a 100 ms timer (a stall of the bid path)",
                service.loop_lag,
            ),
        ):
            family = HistogramMetricFamily(name, helptext)
            family.add_metric([], hist.cumulative(), hist.total)
            yield family


def _log_metrics(log: AuctionLogWriter) -> Iterator[Metric]:
    rows = CounterMetricFamily("pacer_log_rows", "Auction log rows", labels=["result"])
    rows.add_metric(["written"], log.written_rows)
    rows.add_metric(["dropped"], log.dropped_rows)
    yield rows
    yield CounterMetricFamily("pacer_log_write_failures", "Auction log writes that failed", value=log.failures)
    yield GaugeMetricFamily("pacer_log_pending_rows", "Auction log rows waiting in memory", value=log.pending)
    yield GaugeMetricFamily(
        "pacer_log_ok", "1 while the auction log sink works, 0 after a failed write", value=int(log.ok)
    )


def _fleet_metrics(f: Fleet) -> Iterator[Metric]:
    syncs = CounterMetricFamily("pacer_fleet_syncs", "Syncs with the fleet store", labels=["result"])
    syncs.add_metric(["ok"], f.syncs)
    syncs.add_metric(["failed"], f.failures)
    yield syncs
    for name, helptext, value in (
        ("pacer_fleet_sync_seconds", "Duration of the last successful sync", f.last_sync_s),
        ("pacer_fleet_sync_age_seconds", "Time since the last successful sync", f.age_s),
        ("pacer_fleet_leases_valid", "1 while this instance's leases are valid, 0 once lapsed", int(not f.revoked)),
        (
            "pacer_fleet_leased_micros",
            "Micros leased to the whole fleet, summed over this instance's bidders",
            f.fleet_leased,
        ),
        (
            "pacer_journal_pending_wins",
            "Wins journaled here that the fleet store has not counted yet",
            len(f.store.pending()),
        ),
    ):
        yield GaugeMetricFamily(name, helptext, value=value)
    yield CounterMetricFamily(
        "pacer_fleet_duplicate_wins", "Wins another instance had already counted", value=f.duplicates
    )
