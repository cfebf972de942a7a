"""Migrations on PostgreSQL: 0004 backfills `uncertain` on rows stored before it, as on SQLite
(tests/unit/test_uncertain.py), and goes back and forth; 0005 adds `submissions.adapt` and
`adapted_predictions` (tests/unit/test_adapt.py); 0006 stores audio uncompressed out of line.
"""

from alembic import command
from sqlalchemy import create_engine, text

from tests.unit.test_adapt import check_adapt_migration
from tests.unit.test_uncertain import alembic_config, check_backfill


def test_uncertain_is_backfilled_on_postgresql(database_url):
    command.downgrade(alembic_config(database_url), "0003")

    check_backfill(database_url)

    command.downgrade(alembic_config(database_url), "0003")
    command.upgrade(alembic_config(database_url), "head")


def test_adapt_and_adapted_predictions_on_postgresql(database_url):
    command.downgrade(alembic_config(database_url), "0004")

    check_adapt_migration(database_url)


def _audio_storage(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(
                text(
                    "SELECT attstorage FROM pg_attribute "
                    "WHERE attrelid = 'audio_blobs'::regclass AND attname = 'data'"
                )
            )
    finally:
        engine.dispose()


def test_audio_is_stored_for_reading_in_slices_on_postgresql(database_url):
    # 'e': EXTERNAL, out of line and never compressed; 'x': EXTENDED, PostgreSQL's default.
    assert _audio_storage(database_url) == "e"
    command.downgrade(alembic_config(database_url), "0005")
    assert _audio_storage(database_url) == "x"
    command.upgrade(alembic_config(database_url), "head")
    assert _audio_storage(database_url) == "e"


def _segment_columns(url: str) -> set[str]:
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("segments")}
    finally:
        engine.dispose()


def test_segment_context_columns_come_and_go_on_both_databases(database_url, tmp_path):
    from ser_worker.service.db.migrate import upgrade_database

    sqlite = f"sqlite:///{tmp_path / 'ser.db'}"
    upgrade_database(sqlite)
    for url in (database_url, sqlite):
        assert {"context_start_s", "context_end_s"} <= _segment_columns(url)
        command.downgrade(alembic_config(url), "0006")
        assert not {"context_start_s", "context_end_s"} & _segment_columns(url)
        command.upgrade(alembic_config(url), "head")
        assert {"context_start_s", "context_end_s"} <= _segment_columns(url)
