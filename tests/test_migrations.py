"""Alembic: one head, upgrade from empty to head on PostgreSQL and SQLite, and a migrated schema that matches
the SQLAlchemy models (what autogenerate would write next is nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app.db import make_engine
from app.models import Base
from migrations import alembic_config, upgrade
from tests.conftest import create_pg_database, drop_pg_database

TABLES = {"owners", "api_keys", "jobs", "job_events", "outbox", "models", "workers", "webhook_settings",
          "webhook_deliveries", "webhook_attempts", "files", "batches", "batch_items", "checkpoints", "result_cache"}


def heads() -> tuple[str, ...]:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()


def schema_diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_exactly_one_head():
    assert len(heads()) == 1, f"alembic has several heads {heads()}; merge them"


def test_every_revision_chains_to_the_base():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    revisions = list(script.walk_revisions())
    assert revisions, "no migrations"
    bases = [r for r in revisions if r.down_revision is None]
    assert len(bases) == 1, [r.revision for r in bases]


@pytest.fixture
def fresh_pg(pg_server: str) -> Iterator[str]:
    url = create_pg_database(pg_server)
    yield url
    drop_pg_database(pg_server, url)


@pytest.fixture
def fresh_sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'llmos.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_db(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("fresh_pg" if request.param == "postgresql" else "fresh_sqlite")


def test_an_empty_database_differs_from_the_models(fresh_db):
    """The comparison below can fail: against an empty database it reports every table missing."""
    missing = {d[1].name for d in schema_diff(fresh_db) if d[0] == "add_table"}
    assert missing == TABLES


def test_upgrade_from_empty_to_head_matches_the_models(fresh_db):
    upgrade(fresh_db)
    assert current_revision(fresh_db) == heads()[0]
    assert table_names(fresh_db) >= TABLES
    assert schema_diff(fresh_db) == []


def test_upgrade_is_idempotent_and_downgrade_round_trips(fresh_db):
    upgrade(fresh_db)
    upgrade(fresh_db)  # already at head: nothing to do, no error
    command.downgrade(alembic_config(fresh_db), "base")
    assert current_revision(fresh_db) is None
    assert not (TABLES & table_names(fresh_db))
    upgrade(fresh_db)
    assert current_revision(fresh_db) == heads()[0]
    assert schema_diff(fresh_db) == []
