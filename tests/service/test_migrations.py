"""Migrations on PostgreSQL: 0004 backfills `uncertain` on rows stored before it, as on SQLite
(tests/unit/test_uncertain.py), and goes back and forth; 0005 adds `submissions.adapt` and
`adapted_predictions` (tests/unit/test_adapt.py)."""

from alembic import command

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
