"""config.py: settings from PACER_* environment variables (and `pacer serve` flags, which override them)."""

from __future__ import annotations

from pathlib import Path

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
    log_level: str = "info"
