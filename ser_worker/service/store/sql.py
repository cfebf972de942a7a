"""The one dialect switch of the store: PostgreSQL in production, SQLite in embedded mode and the
unit tests. Both spell ``INSERT ... ON CONFLICT`` the same way through their own constructs."""

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


def insert(session: Session, model: type):
    if is_postgresql(session):
        return postgresql_insert(model)
    return sqlite_insert(model)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def ping(session: Session) -> None:
    """Raise the driver's error unless the database answers and its schema is migrated."""
    from sqlalchemy import select

    from ser_worker.service.db.models import ModelVersion, Submission

    session.scalar(select(ModelVersion.id).limit(1))
    session.scalar(select(Submission.adapt).limit(1))  # the newest migration's column
