"""Housekeeping that needs no worker: the database schema, and checking a CREMA-D copy."""

import sys
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from cli import render
from cli.wait import ServiceError, describe_database_error
from ser_worker.config import Settings
from ser_worker.datasets import verify_crema_d
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.session import StoreError, check_sqlite_file, embedded_store_lock


@click.command(name="verify-crema-d")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_crema_d_command(path: Path, as_json: bool) -> None:
    """Check a CREMA-D copy against the official checksums of its 7,442 AudioWAV files.

    Reports missing, extra and corrupted files; exit status 1 unless the copy is complete.

    Example: ser-cli verify-crema-d ./CREMA-D/AudioWAV
    """
    report = verify_crema_d(path)
    render.print_crema_d_report(report, as_json)
    if not report.ok:
        sys.exit(1)


@click.group()
def db() -> None:
    """Database schema management."""


@db.command()
@click.pass_obj
def upgrade(settings: Settings) -> None:
    """Migrate the configured database to the latest schema (alembic upgrade head).

    Example: SER_DATABASE_URL=postgresql+psycopg://ser@db/ser ser-cli db upgrade
    """
    try:
        with embedded_store_lock(settings.database):
            check_sqlite_file(settings.database)
            upgrade_database()
    except (StoreError, SQLAlchemyError) as error:
        raise ServiceError(describe_database_error(error, settings.database)) from None
    click.echo("database schema is up to date")
