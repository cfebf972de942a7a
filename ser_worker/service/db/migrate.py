"""Schema migrations from inside the package: `ser-cli db upgrade`, and the embedded SQLite store
that builds itself on first use. Alembic is imported here only, when a migration runs."""


def upgrade_database(url: str | None = None) -> None:
    """``alembic upgrade head`` on the configured (or given) database."""
    from alembic import command
    from alembic.config import Config

    import migrations

    config = Config()
    # The scripts ship inside the installed package, so no alembic.ini is needed.
    config.set_main_option("script_location", migrations.__path__[0])
    if url:
        config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")
