"""config.py: settings from PACER_* environment variables (and `pacer serve` flags, which override them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PACER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    store: str = "sqlite:///./pacer.db"
    operator_token: str | None = None
    # Where a generated operator token is kept (0600) when PACER_OPERATOR_TOKEN is unset.
    operator_token_file: Path = Path("./pacer-operator-token")
    bidder_token: str | None = None
    tick_ms: int = 100
    # How often an instance syncs with the store: the reserved-money snapshot (embedded), or leases, fleet spend
    # and operator changes (Redis). Both overspend bounds grow with it.
    sync_ms: int = 250
    lease_ttl_ms: int = 3000  # a fleet instance that has not synced for this long stops granting
    journal_dir: Path = Path("./pacer-journal")  # fleet: each instance's local journal of acknowledged events
    ttl_min_s: float = 1.0
    ttl_max_s: float = 300.0
    ttl_initial_s: float = 10.0
    dedupe_days: float = 7.0  # a win re-sent later than this after the first is no longer recognised
    models_dir: Path = _REPO_MODELS
    # The auction log: a local folder, or any URI pyarrow (or fsspec) understands, e.g. s3://bucket/pacer-log.
    # "" turns it off.
    log_url: str = "./pacer-log"
    # Share of decisions logged (outcomes always are); each logged decision stands for 1/sample.
    log_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    log_flush_s: float = Field(default=10.0, gt=0)  # write what is buffered at least this often...
    log_flush_rows: int = 200_000  # ...or as soon as this many rows wait
    log_max_rows: int = 2_000_000  # rows kept in memory while the sink fails; beyond, the oldest are dropped
    # Refit spend curves from the log this often (one instance of a fleet at a time); 0: never.
    refit_s: float = Field(default=3600.0, ge=0)
    refit_since: str = "7d"  # from how much log history
    refit_engine: Literal["duckdb", "spark"] = "duckdb"
    spark_master: str | None = None  # with refit_engine=spark: the cluster URL (default local[*])
    refit_timeout_s: float = 1800.0  # a refit that runs longer is stopped (and its lock released)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line (the Docker image's default)
    # Any request body above this is refused (413) before it is read further: 1,000 events of ~200 bytes take a
    # fifth of it; an operator body is a few hundred bytes.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # A bulk PUT /v1/bidders of 10,000 bidders is ~2.5 MB: that route alone may take this much.
    max_bulk_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # Connection guards (pacer/connections.py), per process. A request head (request line and headers) must arrive
    # within header_timeout_s of its first byte and be at most max_header_bytes (else 408 / 431, and closed).
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    max_header_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    # Open connections beyond this get a 503 and are closed at once. 10,000 is far above what bidders keep open
    # (exchanges pool tens to hundreds of keep-alive connections per instance), costs ~0.1 GB at most (~10 kB per
    # idle connection) and fits common hard open-file limits (pacer raises the soft limit to it plus 1,024), so a
    # flood of idle connections meets 503s instead of EMFILE failing every accept, for everyone.
    max_connections: int = Field(default=10_000, ge=1)
    # Idle connections (never used ones too) are closed after this many seconds (uvicorn's timeout_keep_alive).
    # Behind a load balancer keep it above the balancer's idle timeout.
    keep_alive_s: int = Field(default=5, ge=1, le=3600)
