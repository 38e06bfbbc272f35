"""Engine and session handling. No connection is made until the first query."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

if TYPE_CHECKING:
    from app.jobs.signals import Bus

T = TypeVar("T")


class Database:
    """One engine and session factory per process (the API and each worker build their own).

    The pool is at least as large as the threads that use it (`pool_size`), and has no pre-ping on checkout:
    `run` retries a unit of work once when its connection turns out dead (after a database restart)."""

    def __init__(self, url: str, *, bus: Bus | None = None, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.pool_size = pool_size
        self._single: Engine | None = None
        self.bus = bus

    @property
    def single_statement(self) -> Engine:
        """A second pool whose connections are in autocommit: each statement is its own transaction, with no
        BEGIN and no COMMIT round trip, for units of work of one statement (submitting a job on PostgreSQL).
        Made on first use: a worker never opens it."""
        if self._single is None:
            self._single = make_engine(self.url, pool_size=self.pool_size, autocommit=True)
        return self._single

    @contextmanager
    def session(self, *, single_statement: bool = False) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error, always closes. The wake-ups its transitions
        noted (app.jobs.lifecycle.note) are sent after the commit. `single_statement`: the work is one statement,
        atomic by itself, run without a transaction around it."""
        session = Session(self.single_statement) if single_statement else self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            notes = session.info.pop("llmos.signals", None)
            session.close()
        if notes and self.bus is not None:
            self.bus.publish(notes)

    def run(self, work: Callable[[Session], T], *, single_statement: bool = False) -> T:
        """`work` in one transaction; once more on a fresh connection if the first one was dead."""
        try:
            with self.session(single_statement=single_statement) as session:
                return work(session)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with self.session(single_statement=single_statement) as session:
            return work(session)

    def run_statement(self, work: Callable[[Connection], T]) -> T:
        """One statement on the autocommit pool, without an ORM session around it (the hottest path: one
        POST /jobs); once more on a fresh connection if the first one was dead."""
        for attempt in (1, 2):
            try:
                with self.single_statement.connect() as conn:
                    conn.info.pop("llmos.signals", None)  # the pooled connection outlives a call that failed
                    result = work(conn)
                    notes = conn.info.pop("llmos.signals", None)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                continue
            if notes and self.bus is not None:
                self.bus.publish(notes)
            return result
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()
        if self._single is not None:
            self._single.dispose()


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE changed (typed: SQLAlchemy's Result type does not declare it)."""
    return int(getattr(result, "rowcount", 0))


def make_engine(url: str, *, pool_size: int = 10, autocommit: bool = False) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_setup(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=pool_size, max_overflow=10, pool_recycle=3600,
                         **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))


def _sqlite_setup(engine: Engine) -> None:
    """WAL for concurrent readers; BEGIN IMMEDIATE so two processes never deadlock upgrading a read lock."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def database_from_settings(settings: Settings, **kwargs: Any) -> Database:
    return Database(settings.database_url, **kwargs)
