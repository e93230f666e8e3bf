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
    sync_ms: int = 500  # how often the reserved-money snapshot is written (the crash overspend bound)
    ttl_min_s: float = 1.0
    ttl_max_s: float = 300.0
    ttl_initial_s: float = 10.0
    dedupe_days: float = 7.0  # a win re-sent later than this after the first is no longer recognised
    models_dir: Path = _REPO_MODELS
    log_level: str = "info"
