"""Alembic environment: URL and metadata come from the package, never from alembic.ini."""

from alembic import context

from ser_worker.service.db.models import Base
from ser_worker.service.db.session import get_engine

config = context.config
url = config.get_main_option("sqlalchemy.url") or None


def run_migrations_offline() -> None:
    context.configure(
        url=url or str(get_engine().url),
        target_metadata=Base.metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with get_engine(url).connect() as connection:
        # Batch mode lets later migrations alter columns on SQLite too.
        context.configure(
            connection=connection, target_metadata=Base.metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
