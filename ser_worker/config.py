"""One typed settings object, read from ``SER_*`` environment variables.

With nothing configured the service is embedded: SQLite in a local data directory and tasks run
in the calling process. Setting ``SER_BROKER_URL`` and ``SER_DATABASE_URL`` turns the same code
into the distributed service.
"""

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ser_worker.labels import DEFAULT_EPOCHS

ENV_PREFIX = "SER_"
# The driver installed with the package: a bare postgres:// URL would make SQLAlchemy look for
# psycopg2 (and `postgres://`, what Heroku-style hosts hand out, for no dialect at all).
_POSTGRES_SCHEMES = ("postgres://", "postgresql://")
POSTGRES_DRIVER = "postgresql+psycopg://"


class SettingsError(ValueError):
    """A SER_* variable holds a value the service cannot use; the message names it."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ser"


def normalise_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean PostgreSQL through psycopg 3."""
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return POSTGRES_DRIVER + url[len(scheme) :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

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
    # --- timelines (`ser-cli submit --timeline`: recordings cut into speech segments) ---------
    max_recording_s: float = Field(
        4 * 3600.0, gt=0, description="Longest accepted recording, from its header."
    )
    max_recording_bytes: int = Field(
        1_000_000_000, ge=1, description="Largest accepted recording file (PostgreSQL bytea: 1 GB)."
    )
    vad_threshold: float = Field(
        0.35, gt=0, lt=1, description="Silero VAD speech probability above which a frame is speech."
    )
    vad_min_silence_s: float = Field(
        0.3, ge=0, description="Pauses shorter than this do not split a speech segment."
    )
    vad_fragment_s: float = Field(
        0.75,
        ge=0,
        description="Speech shorter than this is a fragment: it stays with the speech next to it "
        "across a pause shorter than SER_VAD_FRAGMENT_PAUSE_S (0 = off).",
    )
    vad_fragment_pause_s: float = Field(
        1.0, ge=0, description="Longest pause a fragment is joined across."
    )
    vad_reach_back_s: float = Field(
        1.0,
        ge=0,
        description="A speech segment's reported start reaches back this far at most over audio "
        "that Silero hears as speech when it hears the recording backwards; what the models read "
        "does not move (0 = no backward pass, half the detector's cost).",
    )
    segment_window_s: float = Field(
        6.0, gt=1, description="Longest segment: longer speech runs are cut into windows."
    )
    segment_overlap_s: float = Field(
        1.5, ge=0, description="Overlap of consecutive windows of one long speech run."
    )
    segment_context_s: float = Field(
        0.5,
        ge=0,
        description="Audio around a segment the models also read (never into a neighbour's half "
        "of a pause): they learnt from clips with their silence around the speech.",
    )
    segment_batch_size: int = Field(
        8, ge=1, description="Segments per inference task (small: a recording spreads wide)."
    )
    log_level: str | None = Field(
        None,
        description=(
            "Python log level (DEBUG, INFO, WARNING, ERROR) of the CLI (default WARNING) and of "
            "the workers' ser_worker loggers (default: celery's -l)."
        ),
    )

    @field_validator("data_dir", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: object) -> object:
        # SER_DATA_DIR= (set but empty) would be Path(""), the current directory: a store
        # created wherever the command happens to run. Empty means unset.
        if isinstance(value, str) and not value.strip():
            return _default_data_dir()
        return value

    @field_validator("database_url", "broker_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, url: str | None) -> str | None:
        return normalise_database_url(url) if url else url

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str | None) -> str | None:
        if level is None:
            return None
        level = level.strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'ser.db'}"

    @property
    def embedded(self) -> bool:
        return self.broker_url is None


def describe_settings_error(error: ValidationError) -> str:
    """One line per bad variable, named as the user set it: ``SER_BATCH_SIZE='x': ...``."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        variable = f"{ENV_PREFIX}{field.upper()}"
        value = os.environ.get(variable)
        shown = f"={value!r}" if value is not None and "url" not in field else ""
        lines.append(f"{variable}{shown}: {problem['msg']}")
    return "; ".join(lines) or str(error)


def database_location(url: str) -> str:
    """Where a database URL points, password hidden: ``host:port/name`` or the SQLite file."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "an unparsable database URL"
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database or ':memory:'}"
    port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(parsed.get_backend_name(), "")
    return f"{parsed.host or 'localhost'}:{port}/{parsed.database or ''}"


def database_error_reason(error: BaseException) -> str:
    """The driver's own reason (its first line) behind a SQLAlchemy error: what a bare
    ``OperationalError`` leaves out ("connection refused", "password authentication failed")."""
    reason = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return f"{type(reason).__name__}: {lines[0]}" if lines else type(reason).__name__


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_settings_error(error)) from None
