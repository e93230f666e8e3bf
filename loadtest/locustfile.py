"""locustfile.py: locust load on a pacer service or fleet (bidders, the exchange's notices, an operator), keeping
the exchange's ledger of charged wins so that the service's spend can be checked against it exactly.

    PACER_URLS=http://10.0.0.1:8080,http://10.0.0.2:8080 PACER_OPERATOR_TOKEN=... \\
        locust -f loadtest/locustfile.py --headless -u 200 -r 100 --run-time 60s --bidders 50 --ledger-dir out

(`make loadtest` runs `loadtest/run_loadtest.py`, which starts Redis and two instances, runs this, and checks.)

- Bidders `lt-000`...: created (PUT) in a `test_start` listener on the master (or the only) process, before any
  user starts, and polled on every instance until each one sees them all. Every flight covers the test (it ends
  `--flight-s` from now, default the run time + FLIGHT_TAIL_S), pacing `even` and `traffic` in turn, budgets
  spread log-evenly over `--budget-min-micros`..`--budget-max-micros`. Half the bidders start their flight now
  and pace to its end; the other half's flight began CATCH_UP_FLIGHTS flight-lengths ago (created late, as
  happens mid-flight), so they are far behind their curve and bid in full until the budget is gone: the small
  ones exhaust it during the run, which is what puts the no-overspend guarantee under load.
- `BidderUser` asks for bids for random bidders at Poisson times, TASKS_PER_USER_S a second (mostly POST
  /v1/bid, sometimes /v1/bids of 10-100) and, playing the exchange, settles every granted bid as a second-price
  auction: the highest competing bid is lognormal around the granted bid (WIN_SHARE of grants win) and a win
  pays it. Its notice (a loss notice for LOSS_REPORT_SHARE of losses) falls due after an exponential delay, cut
  at NOTICE_DELAY_MAX_S; due notices are posted to /v1/events in batches by whichever user's task loop finds
  them waiting (no extra greenlets). A non-200 answer is retried until a 200; DUPLICATE_SHARE of acknowledged
  wins are sent again later.
- `OperatorUser` (exactly one) polls statuses and the bidder list and raises a budget now and then.
- Every request goes to the next of `--pacer-urls` in turn, so most notices reach an instance that did not
  grant the bid, as behind a round-robin load balancer (`--notices-to granting`: each notice goes to the
  instance that granted its bid, as behind a balancer hashing on auction_id).
- The ledger: a win counts once acknowledged (a 200 on /v1/events means durable). When the test stops, every
  process sends all notices still waiting, then writes `--ledger-dir/exchange-<host>-<pid>.json`:
  `{"wins": [[bidder_id, auction_id, price_micros], ...], "tally", "reasons", "errors", "unsent", ...}`.

Fair to the no-overspend check: with every instance alive, the README's bounds let spend pass a budget only
by wins that arrive after their reservation expired. The reservation TTL is 1.5 x the 99th percentile of the
notice delays the service observes (at least 1 s); the delays here are cut at NOTICE_DELAY_MAX_S, their own
98th percentile, so every notice arrives well within it.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import os
import random
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import gevent
from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("pacer.loadtest")

# --- the bidders -----------------------------------------------------------------------------------------------
BIDDERS = 50
BIDDER_PREFIX = "lt-"
BUDGET_MIN_MICROS = 5_000  # about ten wins
BUDGET_MAX_MICROS = 5_000_000  # more than one bidder wins in a minute at the default load
FLIGHT_TAIL_S = 10.0  # flights end this long after the run
CATCH_UP_FLIGHTS = 9.0  # a late bidder's flight began this many flight-lengths ago: 90% behind its curve
UNTIMED_FLIGHT_S = 3600.0  # flight length when locust has no --run-time (web UI)
PACINGS = ("even", "traffic")

# --- the bidders' traffic --------------------------------------------------------------------------------------
TASKS_PER_USER_S = 10.0  # each BidderUser's mean pace (Poisson): the load is (users - 1) x this
SINGLE_WEIGHT, BATCH_WEIGHT = 9, 1  # task runs of POST /v1/bid : POST /v1/bids
BATCH_SIZES = (10, 100)
VALUE_MEDIAN_MICROS = 2_000  # what a bidder asks to bid: lognormal
VALUE_SIGMA = 0.5

# --- the exchange ----------------------------------------------------------------------------------------------
WIN_SHARE = 0.4  # P(highest competing bid <= granted bid)
COMPETING_SIGMA = 0.5
# competing = granted x lognormal(mu, sigma), with mu such that P(competing <= granted) = WIN_SHARE
COMPETING_MU = -COMPETING_SIGMA * NormalDist().inv_cdf(WIN_SHARE)
NOTICE_DELAY_MEAN_S = 0.2  # exponential...
NOTICE_DELAY_MAX_S = 0.8  # ...cut at its 98th percentile: well within the reservation TTL (module docstring)
LOSS_REPORT_SHARE = 0.5  # lost grants that get a loss notice; the others' reservations expire
DUPLICATE_SHARE = 0.02  # acknowledged wins sent once more, later (must not be charged twice)
FLUSH_LAG_S = 0.05  # a due notice waits at most about this long, so that notices share a POST
MAX_EVENTS = 1000  # per POST /v1/events: the service's limit
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0  # backoff of a failed /v1/events POST, doubling
STOP_DRAIN_S = 60.0  # at the stop, how long notices may take to be acknowledged
ERRORS_KEPT = 50

# --- the operator ----------------------------------------------------------------------------------------------
OPERATOR_WAIT_S = (0.5, 2.0)
BUDGET_RAISE = (1.1, 1.5)  # a PATCH multiplies max(budget, spent) by a factor in this range
LIST_LIMIT = 20  # bidders per page of GET /v1/bidders
VISIBLE_TIMEOUT_S = 15.0  # new bidders reach every instance within one sync (250 ms by default)
LEASE_WAIT_S = 0.6  # then two more syncs, so that every instance holds leases before bids start

REQUEST_TIMEOUT_S = 10.0
JSON_HEADERS = {"Content-Type": "application/json"}


def _dumps(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(round(ts, 3), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_: Any) -> None:
    group = parser.add_argument_group("pacer")
    group.add_argument(
        "--pacer-urls",
        env_var="PACER_URLS",
        default="",
        help="comma-separated base URLs of the instances, used in turn (default: --host)",
    )
    group.add_argument(
        "--bidders",
        env_var="PACER_LT_BIDDERS",
        type=int,
        default=BIDDERS,
        help="how many bidders to create and bid for",
    )
    group.add_argument(
        "--bidder-prefix", env_var="PACER_LT_PREFIX", default=BIDDER_PREFIX, help="bidder ids are this + 000, 001, ..."
    )
    group.add_argument("--budget-min-micros", type=int, default=BUDGET_MIN_MICROS)
    group.add_argument("--budget-max-micros", type=int, default=BUDGET_MAX_MICROS)
    group.add_argument(
        "--flight-s",
        type=float,
        default=0.0,
        help=f"flight length (default: --run-time + {FLIGHT_TAIL_S:g} s, or {UNTIMED_FLIGHT_S:g} s)",
    )
    group.add_argument(
        "--notices-to",
        choices=("next", "granting"),
        default="next",
        help="send each notice to the next instance in turn (as a round-robin balancer does), or "
        "to the instance that granted the bid (as a balancer hashing on auction_id does)",
    )
    group.add_argument(
        "--ledger-dir",
        env_var="PACER_LEDGER_DIR",
        default="loadtest-out",
        help="where each process writes its exchange ledger at the end",
    )


@dataclass(frozen=True)
class Settings:
    """What every process derives alike from the command line and the environment."""

    urls: list[str]
    bidders: list[str]
    operator_headers: dict[str, str]
    bidder_headers: dict[str, str]
    budget_range: tuple[int, int]
    flight_s: float
    sticky: bool  # notices go to the instance that granted the bid
    ledger_dir: Path

    @classmethod
    def of(cls, environment: Environment) -> Settings:
        o = environment.parsed_options
        urls = [u.strip().rstrip("/") for u in (o.pacer_urls or environment.host or "").split(",") if u.strip()]
        if not urls:
            raise ValueError("no service: set PACER_URLS (or --pacer-urls, or --host)")
        operator = {**JSON_HEADERS, "Authorization": f"Bearer {os.environ.get('PACER_OPERATOR_TOKEN', '')}"}
        bidder_token = os.environ.get("PACER_BIDDER_TOKEN")
        bidder = {**JSON_HEADERS, **({"Authorization": f"Bearer {bidder_token}"} if bidder_token else {})}
        width = max(3, len(str(o.bidders - 1)))
        flight_s = o.flight_s or (o.run_time + FLIGHT_TAIL_S if o.run_time else UNTIMED_FLIGHT_S)
        return cls(
            urls,
            [f"{o.bidder_prefix}{i:0{width}d}" for i in range(o.bidders)],
            operator,
            bidder,
            (o.budget_min_micros, o.budget_max_micros),
            flight_s,
            o.notices_to == "granting",
            Path(o.ledger_dir),
        )

    def budget(self, i: int) -> int:
        """Budgets spread log-evenly over the range, the same on every run."""
        lo, hi = self.budget_range
        share = i / (len(self.bidders) - 1) if len(self.bidders) > 1 else 0.0
        return round(lo * (hi / lo) ** share)


@dataclass(slots=True)
class Notice:
    event: dict[str, Any]
    decided_at: float  # monotonic time the grant was received
    home: str | None  # where to send it: the granting instance, or None for the next in turn
    resend: bool = False  # a deliberate second send of an acknowledged win
    failures: int = 0


class Exchange:
    """This process's share of the exchange: it settles granted bids as auctions, holds the notices until they
    are due and acknowledged, and keeps the ledger of charged wins (what the service's spend must equal)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rng = random.Random()
        self._auction_ids = map(f"{secrets.token_hex(4)}-{{}}".format, itertools.count())  # unique across processes
        self._turn = itertools.count()
        self._seq = itertools.count()  # heap tie-break
        self.pending: list[tuple[float, int, Notice]] = []  # (due, seq, notice)
        self.charged: dict[tuple[str, str], int] = {}  # the ledger: (bidder_id, auction_id) -> price_micros
        self.tally: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()  # "bid" or the reason for no bid
        self.errors: list[str] = []  # what a correct service never does
        self.delays: list[float] = []  # grant received -> first acknowledgement, per win

    def url(self) -> str:
        """The next instance in turn."""
        urls = self.settings.urls
        return urls[next(self._turn) % len(urls)]

    def auction(self) -> dict[str, Any]:
        value = max(1, round(self.rng.lognormvariate(math.log(VALUE_MEDIAN_MICROS), VALUE_SIGMA)))
        return {
            "bidder_id": self.rng.choice(self.settings.bidders),
            "auction_id": next(self._auction_ids),
            "bid_micros": value,
        }

    def error(self, text: str) -> None:
        if len(self.errors) < ERRORS_KEPT:
            log.error(text)
        self.errors.append(text)

    def settle(self, requests: list[dict[str, Any]], decisions: list[dict[str, Any]], url: str) -> None:
        """Run the auctions the service (at `url`) bid in; schedule their notices."""
        if len(decisions) != len(requests):
            self.error(f"{len(decisions)} decisions for {len(requests)} requests")
            return
        now = time.monotonic()
        home = url if self.settings.sticky else None
        for request, decision in zip(requests, decisions, strict=True):
            self.tally["auctions"] += 1
            if decision.get("auction_id") != request["auction_id"]:
                self.error(f"decision for {decision.get('auction_id')!r} in the place of {request['auction_id']!r}")
                continue
            if not decision["bid"]:
                self.reasons[decision["reason"]] += 1
                continue
            granted = decision["bid_micros"]
            if not 1 <= granted <= request["bid_micros"]:
                self.error(f"{request['auction_id']}: granted {granted} for a request of {request['bid_micros']}")
                continue
            self.reasons["bid"] += 1
            self.tally["granted_micros"] += granted
            competing = granted * self.rng.lognormvariate(COMPETING_MU, COMPETING_SIGMA)
            ids = {"bidder_id": request["bidder_id"], "auction_id": request["auction_id"]}
            if competing <= granted:  # second price: the winner pays the highest competing bid
                self.tally["wins_decided"] += 1
                event = {"type": "win", **ids, "price_micros": max(1, math.floor(competing))}
            elif self.rng.random() < LOSS_REPORT_SHARE:
                event = {"type": "loss", **ids}
            else:
                continue
            self._schedule(now + self._delay(), Notice(event, now, home))

    def _delay(self) -> float:
        return min(self.rng.expovariate(1 / NOTICE_DELAY_MEAN_S), NOTICE_DELAY_MAX_S)

    def _schedule(self, due: float, notice: Notice) -> None:
        heapq.heappush(self.pending, (due, next(self._seq), notice))

    def _take(self, until: float) -> list[Notice]:
        batch: list[Notice] = []
        while self.pending and self.pending[0][0] <= until and len(batch) < MAX_EVENTS:
            batch.append(heapq.heappop(self.pending)[2])
        return batch

    def flush_due(self, client: FastHttpSession) -> None:
        """Post the notices that are due, once the oldest has waited FLUSH_LAG_S (so that they share a POST)."""
        now = time.monotonic()
        if self.pending and self.pending[0][0] <= now - FLUSH_LAG_S:
            self.post(client, self._take(now))

    def post(self, client: FastHttpSession, notices: list[Notice]) -> bool:
        """POST the notices, one batch per instance they go to; True once every batch was acknowledged."""
        batches: dict[str, list[Notice]] = {}
        turn = self.url()
        for n in notices:
            batches.setdefault(n.home or turn, []).append(n)
        queue = list(batches.items())
        done = []
        while queue:
            url, batch = queue.pop(0)
            try:
                done.append(self._post(client, url, batch))
            except BaseException:  # killed by the stop: the batches not posted yet go back too
                for _, rest in queue:
                    self._retry(rest)
                raise
        return all(done)

    def _post(self, client: FastHttpSession, url: str, batch: list[Notice]) -> bool:
        """True once acknowledged (or rejected as invalid, an error). Anything else, even this greenlet being
        killed mid-request by the stop, puts the batch back to be sent again: re-sending a win the service may
        have recorded is safe, losing one is not."""
        body = _dumps({"events": [n.event for n in batch]})
        try:
            with client.post(
                url + "/v1/events",
                data=body,
                headers=self.settings.bidder_headers,
                name="/v1/events",
                catch_response=True,
            ) as response:
                if response.status_code == 200:
                    self._acknowledged(batch, response.json())
                    return True
                text = f"{response.status_code} {(response.text or str(response.error))[:200]}"
                response.failure(text)
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    self.error(f"/v1/events rejected: {text}")  # all invalid or none: nothing was counted
                    return True
        except BaseException:
            self._retry(batch)
            raise
        self._retry(batch)
        return False

    def _retry(self, batch: list[Notice]) -> None:
        now = time.monotonic()
        self.tally["events_retried"] += len(batch)
        for n in batch:
            n.failures += 1
            self._schedule(now + min(RETRY_FIRST_S * 2 ** (n.failures - 1), RETRY_MAX_S), n)

    def _acknowledged(self, batch: list[Notice], body: dict[str, Any]) -> None:
        now = time.monotonic()
        self.tally["service_accepted"] += body["accepted"]
        self.tally["service_duplicates"] += body["duplicates"]
        if body["accepted"] + body["duplicates"] != len(batch):
            self.error(f"/v1/events answered {body} for {len(batch)} events")
        for n in batch:
            e = n.event
            if e["type"] == "loss":
                self.tally["loss_notices"] += 1
                continue
            self.tally["win_notices"] += 1
            if n.resend:
                self.tally["duplicates_sent"] += 1
            key = (e["bidder_id"], e["auction_id"])
            if key in self.charged:
                continue
            self.charged[key] = e["price_micros"]
            self.delays.append(now - n.decided_at)
            if self.rng.random() < DUPLICATE_SHARE:
                self._schedule(now + self._delay(), Notice(e, n.decided_at, n.home, resend=True))

    def drain(self, client: FastHttpSession, timeout: float) -> None:
        """The run is over: send every notice still waiting, due or not, until each is acknowledged."""
        deadline = time.monotonic() + timeout
        failures = 0
        while self.pending and time.monotonic() < deadline:
            if self.post(client, self._take(math.inf)):
                failures = 0
            else:
                failures += 1
                gevent.sleep(min(RETRY_FIRST_S * 2 ** (failures - 1), RETRY_MAX_S))

    def write(self) -> Path:
        folder = self.settings.ledger_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"exchange-{socket.gethostname()}-{os.getpid()}.json"
        delays = sorted(self.delays)
        ledger = {
            "wins": [[b, a, p] for (b, a), p in self.charged.items()],
            "tally": dict(self.tally),
            "reasons": dict(self.reasons),
            "errors": self.errors[:ERRORS_KEPT],
            "error_count": len(self.errors),
            "unsent": len(self.pending),
            "win_delay_s": {
                "p50": _quantile(delays, 0.5),
                "p99": _quantile(delays, 0.99),
                "max": delays[-1] if delays else None,
            },
        }
        path.write_text(json.dumps(ledger))
        return path


def _quantile(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


_exchange: Exchange | None = None  # this process's, from test_start to the next


def _session(environment: Environment) -> FastHttpSession:
    """A client outside any user (bidder creation, the final drain); its requests count in the stats."""
    return FastHttpSession(
        None, environment.events.request, None, network_timeout=REQUEST_TIMEOUT_S, connection_timeout=REQUEST_TIMEOUT_S
    )


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    global _exchange
    settings = Settings.of(environment)
    if not isinstance(environment.runner, WorkerRunner):
        _create_bidders(environment, settings)
    if not isinstance(environment.runner, MasterRunner):
        _exchange = Exchange(settings)


def _create_bidders(environment: Environment, settings: Settings) -> None:
    """PUT every bidder, then wait until every instance sees all of them (a fleet shares them at its next sync)
    and holds leases: users start only after this returns."""
    if not os.environ.get("PACER_OPERATOR_TOKEN"):
        raise ValueError("PACER_OPERATOR_TOKEN is not set: the operator routes need it")
    client = _session(environment)
    now = time.time()
    end = now + settings.flight_s
    for i, bidder_id in enumerate(settings.bidders):
        late = (i // len(PACINGS)) % 2 == 1  # every other pair: both pacings late and on time
        start = now - CATCH_UP_FLIGHTS * settings.flight_s if late else now
        period = {"type": "flight", "start": _rfc3339(start), "end": _rfc3339(end)}
        body = {"budget_micros": settings.budget(i), "period": period, "pacing": PACINGS[i % len(PACINGS)]}
        with client.put(
            f"{settings.urls[0]}/v1/bidders/{bidder_id}",
            data=_dumps(body),
            headers=settings.operator_headers,
            name="/v1/bidders/[id]",
            catch_response=True,
        ) as r:
            if r.status_code not in (200, 201):
                raise RuntimeError(f"PUT /v1/bidders/{bidder_id}: {r.status_code} {r.text}")
    deadline = time.monotonic() + VISIBLE_TIMEOUT_S
    for url in settings.urls:
        for bidder_id in settings.bidders:
            while True:  # another process's state: a bounded poll is the only way to see it
                with client.get(
                    f"{url}/v1/bidders/{bidder_id}",
                    headers=settings.operator_headers,
                    name="/v1/bidders/[id]",
                    catch_response=True,
                ) as r:
                    if r.status_code == 200:
                        break
                    r.success()  # a 404 until the instance's next sync is expected
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} does not see bidder {bidder_id} after {VISIBLE_TIMEOUT_S:g} s")
                gevent.sleep(0.05)
    gevent.sleep(LEASE_WAIT_S)
    log.info("created %d bidders, seen by %d instance(s)", len(settings.bidders), len(settings.urls))


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    """Users are stopped by now: send what they left, then write this process's ledger."""
    if _exchange is None or isinstance(environment.runner, MasterRunner):
        return
    _exchange.drain(_session(environment), STOP_DRAIN_S)
    if _exchange.pending:
        _exchange.error(f"{len(_exchange.pending)} notices still unacknowledged after {STOP_DRAIN_S:g} s")
    path = _exchange.write()
    log.info("exchange ledger: %d wins -> %s", len(_exchange.charged), path)


class BidderUser(FastHttpUser):
    """Bidders asking to bid, mostly one auction per call, sometimes a batch; between its bids the user sends
    the exchange's notices that are due."""

    network_timeout = connection_timeout = REQUEST_TIMEOUT_S

    def wait_time(self) -> float:
        """Exponential waits: users that start together would otherwise ask in lockstep, bursts that queue at the
        service and read as latency."""
        return random.expovariate(TASKS_PER_USER_S)

    @task(SINGLE_WEIGHT)
    def bid(self) -> None:
        exchange = self._exchange()
        request = exchange.auction()
        url = exchange.url()
        body = self._post(url, "/v1/bid", request, exchange.settings.bidder_headers)
        if body is not None:
            exchange.settle([request], [body], url)

    @task(BATCH_WEIGHT)
    def bids(self) -> None:
        exchange = self._exchange()
        requests = [exchange.auction() for _ in range(exchange.rng.randint(*BATCH_SIZES))]
        url = exchange.url()
        body = self._post(url, "/v1/bids", {"requests": requests}, exchange.settings.bidder_headers)
        if body is not None:
            exchange.settle(requests, body["decisions"], url)

    def _exchange(self) -> Exchange:
        assert _exchange is not None, "test_start creates it"
        _exchange.flush_due(self.client)
        return _exchange

    def _post(self, url: str, path: str, body: object, headers: dict[str, str]) -> Any:
        with self.client.post(
            url + path, data=_dumps(body), headers=headers, name=path, catch_response=True
        ) as response:
            if response.status_code == 200:
                return response.json()
            response.failure(f"{response.status_code} {(response.text or str(response.error))[:200]}")
            return None


class OperatorUser(FastHttpUser):
    """The operator: reads statuses and pages of the bidder list, and now and then raises a budget (never below
    what is spent). Exactly one, whatever the user count."""

    fixed_count = 1
    wait_time = between(*OPERATOR_WAIT_S)
    network_timeout = connection_timeout = REQUEST_TIMEOUT_S

    def on_start(self) -> None:
        self.settings = Settings.of(self.environment)
        self.rng = random.Random()
        self._turn = itertools.count()
        self._cursor: str | None = None

    def _url(self) -> str:
        return self.settings.urls[next(self._turn) % len(self.settings.urls)]

    def _status(self, bidder_id: str) -> dict[str, Any] | None:
        with self.client.get(
            f"{self._url()}/v1/bidders/{bidder_id}",
            headers=self.settings.operator_headers,
            name="/v1/bidders/[id]",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {(r.text or str(r.error))[:200]}")
                return None
            status: dict[str, Any] = r.json()
            return status

    @task(6)
    def status(self) -> None:
        self._status(self.rng.choice(self.settings.bidders))

    @task(2)
    def list_page(self) -> None:
        """The next page of the bidder list, from the start again after the last."""
        query = f"limit={LIST_LIMIT}" + (f"&cursor={self._cursor}" if self._cursor else "")
        with self.client.get(
            f"{self._url()}/v1/bidders?{query}",
            headers=self.settings.operator_headers,
            name="/v1/bidders?limit=[n]",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {(r.text or str(r.error))[:200]}")
                return
            self._cursor = r.json()["next"]

    @task(1)
    def raise_budget(self) -> None:
        bidder_id = self.rng.choice(self.settings.bidders)
        status = self._status(bidder_id)
        if status is None:
            return
        budget = round(max(status["budget_micros"], status["spent_micros"]) * self.rng.uniform(*BUDGET_RAISE))
        self.client.patch(
            f"{self._url()}/v1/bidders/{bidder_id}",
            data=_dumps({"budget_micros": budget}),
            headers=self.settings.operator_headers,
            name="/v1/bidders/[id]",
        )
