"""Typed settings, read from LLMOS_* environment variables and validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _user_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("llmos", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOS_", extra="ignore")

    env: str = Field("development", description="development or production")
    data_dir: Path = Field(default_factory=lambda: _user_data_dir(),
                           description="files of the embedded default: database, broker, models; default the "
                           "per-user data directory (~/.local/share/llmos on Linux), whatever the working directory")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under data_dir")
    broker_url: str = Field("", description="Celery broker URL; empty means kombu filesystem:// under data_dir")
    model_dir: Path | None = Field(None, description="converted/downloaded model files; default data_dir/models")

    db_pool_size: int = Field(40, ge=1, description="database connections per process; at least the threads "
                              "that use it (API threads, worker concurrency)")

    # API limits
    max_request_bytes: int = 1_000_000
    max_prompt_chars: int = 32_000
    max_new_tokens_limit: int = 4096
    max_wait_s: int = 60
    max_waiting: int = Field(8, ge=0, description="long-polls (?wait=) one API process holds at once; past that "
                             "they answer at once with Retry-After: 1 (0: no bound). `llmos api` sets its threads "
                             "less 16, so 16 always serve everything else")
    default_timeout_s: int = 600
    max_timeout_s: int = 24 * 3600
    public_url: str = ""
    rate_limit: str = Field("1200/minute", description="requests per key (N/second|minute|hour|day) unless the key "
                            "has its own (`llmos keys create --rate-limit`); enough for any client that is not a "
                            "runaway loop")
    max_queued_jobs: int = Field(10_000, ge=1, description="queued jobs one owner may have at once (429 above)")
    result_cache_ttl_s: float = Field(3600.0, ge=0, description="how long a deterministic result is kept for the same "
                                      "owner's identical request (0: no result cache)")
    result_cache_max_entries: int = Field(10_000, ge=0, description="results kept at most; the oldest go first")
    result_cache_max_entry_bytes: int = Field(1_000_000, ge=0, description="larger results are not cached")
    max_running_jobs: int = Field(0, ge=0, description="jobs of one owner running at once (0: no limit); a worker "
                                  "that would start one more puts it back for 2 s (read by the workers)")

    # Files and batches
    files_dir: Path | None = Field(None, description="uploaded and batch result files; default data_dir/files")
    max_file_bytes: int = Field(512 * 1024 * 1024, description="largest upload to POST /files (413 above)")
    max_batch_request_bytes: int = Field(64 * 1024 * 1024, description="largest POST /batches body (inline documents)")
    max_batch_documents: int = Field(200_000, description="documents one batch may hold")
    batch_chunk_size: int = Field(64, ge=1, description="documents per worker message")
    batch_chunk_timeout_s: float = Field(3600.0, description="a running chunk older than this is handed out again")

    # Fine-tuning
    finetune_dir: Path | None = Field(None, description="checkpoints and adapters; default data_dir/finetunes. "
                                      "Shared by every worker and the API in a fleet, like files_dir")
    finetune_check_max_bytes: int = Field(
        64 * 1024 * 1024, description="training files up to this size are checked line by line at submit (422); "
        "larger ones by the worker before training (invalid_input)")
    finetune_concurrency: int = Field(1, ge=1, description="fine-tuning jobs one worker trains at once")
    finetune_keep_checkpoints: int = Field(3, ge=1, description="a job's newest checkpoints kept; older ones "
                                           "are deleted as new ones are saved")

    # Broker
    visibility_timeout_s: int = 24 * 3600 + 600
    publish_timeout_s: float = 2.0

    # Worker
    gpu_type: str | None = Field(None, description="override the detected GPU type (h100, a100-80gb, cpu, ...)")
    worker_concurrency: int = 32
    worker_max_batch: int = 64
    model_cache_bytes: int | None = Field(None, description="model cache budget; default 90% of GPU memory or 8 GiB")
    heartbeat_interval_s: float = 5.0
    relay_interval_s: float = 1.0
    cancel_poll_interval_s: float = Field(2.0, description="a worker's fallback poll for cancels it was not told of")
    scheduler_lock_id: int = Field(7_463_915, description="PostgreSQL advisory lock the active scheduler holds")
    reconcile_interval_s: float = 10.0
    worker_lost_after_s: float = 30.0
    republish_after_s: float = 120.0
    shutdown_grace_s: float = 30.0
    progress_interval_s: float = 5.0
    outcome_write_retry_s: float = 600.0
    device: str | None = Field(None, description="torch device override (cuda, cpu)")

    # Webhooks
    webhook_allow_private: bool = Field(False, description="allow webhook URLs on private/loopback addresses")
    webhook_retry_schedule_s: str = Field(
        "5,30,120,600,1800,3600,10800,21600,43200,43200",
        description="seconds before each retry (jitter added); the delivery fails when the list is used up")
    webhook_timeout_s: float = 10.0
    webhook_sweep_interval_s: float = 1.0
    webhook_concurrency: int = Field(8, ge=1, description="deliveries the scheduler sends at once")

    # Secrets at rest (app.secrets_box)
    secret_key: SecretStr = Field(
        SecretStr(""), description="key(s) sealing stored secrets (webhook signing secrets): base64 of 32 bytes, "
        "comma-separated, newest first (the first seals, all open). Required in production; elsewhere a key is "
        "generated into data_dir/secret.key on first use")

    # Operations (metrics; logs are LLMOS_LOG_FORMAT / LLMOS_LOG_LEVEL, read by app.logging_setup)
    metrics_token: str = Field("", description="when set, GET /metrics needs 'Authorization: Bearer <token>'")
    metrics_cache_s: float = Field(5.0, ge=0, description="how long /metrics reuses its database read")
    worker_metrics_port: int | None = Field(None, ge=0, description="a worker's /metrics port; default 9101, "
                                            "off (0) when LLMOS_ENV=test")
    scheduler_metrics_port: int | None = Field(None, ge=0, description="the scheduler's /metrics port; default "
                                               "9102, off (0) when LLMOS_ENV=test")

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.model_dir is None:
            self.model_dir = self.data_dir / "models"
        if self.files_dir is None:
            self.files_dir = self.data_dir / "files"
        if self.finetune_dir is None:
            self.finetune_dir = self.data_dir / "finetunes"
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'llmos.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.worker_metrics_port is None:
            self.worker_metrics_port = 0 if self.env == "test" else 9101
        if self.scheduler_metrics_port is None:
            self.scheduler_metrics_port = 0 if self.env == "test" else 9102
        if self.env not in ("development", "production", "test"):
            raise ValueError("LLMOS_ENV must be development, production or test")
        if self.visibility_timeout_s <= self.max_timeout_s:
            # a late-ack message still unacked after the visibility timeout is delivered again (DESIGN.md)
            raise ValueError("LLMOS_VISIBILITY_TIMEOUT_S must be longer than LLMOS_MAX_TIMEOUT_S")
        if self.env == "production" and self.database_url.startswith("sqlite"):
            raise ValueError("LLMOS_ENV=production needs LLMOS_DATABASE_URL (PostgreSQL)")
        from app.secrets_box import parse_keys

        try:
            keys = parse_keys(self.secret_key.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"LLMOS_SECRET_KEY: {exc}") from None
        if self.env == "production" and not keys:
            raise ValueError("LLMOS_ENV=production needs LLMOS_SECRET_KEY (e.g. `openssl rand -base64 32`); "
                             "it seals the webhook signing secrets stored in the database")
        try:
            schedule = self.webhook_retry_schedule
        except ValueError:
            raise ValueError("LLMOS_WEBHOOK_RETRY_SCHEDULE_S must be comma-separated seconds") from None
        if not schedule or any(d < 0 for d in schedule):
            raise ValueError("LLMOS_WEBHOOK_RETRY_SCHEDULE_S needs at least one non-negative delay")
        return self

    @property
    def webhook_retry_schedule(self) -> list[float]:
        return [float(x) for x in self.webhook_retry_schedule_s.split(",")]

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    return Settings(**(overrides or {}))
