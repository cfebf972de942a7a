"""One typed settings object, read from ``SER_*`` environment variables.

With nothing configured the service is embedded: SQLite in a local data directory and tasks run
in the calling process. Setting ``SER_BROKER_URL`` and ``SER_DATABASE_URL`` turns the same code
into the distributed service.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ser_worker.labels import DEFAULT_EPOCHS


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ser"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SER_", frozen=True)

    data_dir: Path = Field(default_factory=_default_data_dir, description="Local state (SQLite).")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/ser.db"
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://...); unset = embedded, tasks run in process."
    )
    batch_size: int = Field(16, ge=1, description="Clips per inference task (one batched predict).")
    max_file_bytes: int = Field(50_000_000, ge=1, description="Largest accepted clip, in bytes.")
    max_duration_s: float = Field(60.0, gt=0, description="Longest accepted clip, from its header.")
    min_duration_s: float = Field(0.25, gt=0, description="Shortest clip after trimming silence.")
    retrain_every_s: float = Field(
        86_400.0, gt=0, description="Celery beat interval for scheduled retraining."
    )
    train_epochs: int = Field(DEFAULT_EPOCHS, ge=1, description="Epochs for scheduled retraining.")
    train_precision: Literal["float32", "mixed_bfloat16"] = Field(
        "float32",
        description="Training arithmetic; mixed_bfloat16 is ~1.6x faster on CPUs with AMX.",
    )
    visibility_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="Seconds before Redis hands a task whose worker vanished to another worker.",
    )
    tf_threads: int = Field(
        0,
        ge=0,
        description=(
            "Threads TensorFlow and the speech encoder may use per worker process "
            "(0 = their defaults)."
        ),
    )
    log_level: str = Field("INFO", description="Log level of workers and the CLI.")

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'ser.db'}"

    @property
    def embedded(self) -> bool:
        return self.broker_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
