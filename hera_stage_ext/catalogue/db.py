"""Database engines and sessions for SQLite (the embedded default) and PostgreSQL (shared sites).

Owns the connection settings that make both engines behave the same for the catalogue:
case-sensitive LIKE on SQLite (PostgreSQL's LIKE already is), WAL and a long busy timeout so a
server and a worker process can share one SQLite file, foreign keys on, and ``BEGIN IMMEDIATE``
for write transactions on SQLite (a plain ``BEGIN`` that reads and then writes fails with
"database is locked" when another process writes, whatever the busy timeout).
Schema creation and upgrades go through alembic (``upgrade``). Reads a request can make
arbitrarily slow (searches) run under a time limit (``read_limited``): PostgreSQL's
``statement_timeout`` on a connection pool of their own, a progress handler on SQLite.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import QueryTimeout

T = TypeVar("T")

#: Seconds a SQLite connection waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 30
#: SQLite virtual machine instructions between two looks at a limited read's clock.
_SQLITE_PROGRESS_STEPS = 10_000
#: Key of the PostgreSQL advisory lock held while the schema is migrated ("hera" in ASCII).
_PG_MIGRATION_LOCK = 0x68657261
#: PostgreSQL's SQLSTATE for a statement cancelled by statement_timeout (query_canceled).
_PG_QUERY_CANCELED = "57014"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url`` with the catalogue's per-connection settings applied."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if engine.dialect.driver == "psycopg":
        _load_json_columns_fast(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        # The Librarian's `-matches` is LIKE, case-sensitive on PostgreSQL; this makes SQLite's
        # the same, and lets a literal prefix use the (binary) name index.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        if connection.connection.dbapi_connection.in_transaction:
            # Begun on the driver's connection already: a read's snapshot
            # (``Database.connect_limited``). A write must hold SQLite's write lock from its
            # first statement (its reads decide what it writes): never one inside a
            # transaction begun otherwise.
            if mode != "DEFERRED":
                raise RuntimeError("a write transaction on a connection already in a "
                                   "transaction")
            return
        connection.exec_driver_sql(f"BEGIN {mode}")


#: json's own C scanner, as ``json.loads`` runs it (one decoder, made once).
_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads_json_column(value: Any) -> Any:
    """``json.loads(value)`` (a JSON column's stored text, ``str`` or UTF-8 ``bytes``), faster
    for what such a column usually holds: ``{}``, or a text that json's own scanner reads from
    its first character to its last. Anything else (whitespace around the value, another
    encoding, an error) goes through ``json.loads`` itself, so the result or error is exactly
    its. On a search page's 101 rows the checksums and metadata decoded by ``json.loads`` (its
    encoding check, two whitespace matches and ``raw_decode`` around the scanner) were the
    largest single cost of the page's rows."""
    if type(value) is bytes:
        if value == b"{}":
            return {}
        # json.loads decodes bytes as UTF-8 unless they start with a BOM or a NUL byte.
        if value[:1] != b"{" or len(value) < 2 or value[1] == 0:
            return json.loads(value)
        text = value.decode("utf-8", "surrogatepass")
    elif type(value) is str:
        if value == "{}":
            return {}
        text = value
    else:
        return json.loads(value)
    try:
        found, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(value)
    return found if end == len(text) else json.loads(value)


def loads_json_texts(texts: Iterable[str | None], missing: str = "null") -> list[Any]:
    """``json.loads`` of each of ``texts`` (a JSON column's stored texts, as SQLite gives them;
    None or empty: ``missing``), in one call for the whole batch (a call a row cost a batch's
    reader more than the decoding). Where the batch is not one value a text (a damaged row:
    more than one value in it, or none), each is decoded on its own, so a bad one raises
    json's own error and none is given another's value."""
    each = [text or missing for text in texts]
    try:
        values = json.loads("[" + ",".join(each) + "]")
    except ValueError:
        values = []
    if len(values) != len(each):
        values = [json.loads(text) for text in each]
    return values


def _load_json_columns_fast(engine: Engine) -> None:
    """PostgreSQL: psycopg decodes JSON columns on each of ``engine``'s connections with
    ``loads_json_column`` instead of ``json.loads``."""
    from psycopg.types.json import set_json_loads

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        set_json_loads(loads_json_column, dbapi_connection)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def serialise(session: Session, key: int) -> None:
    """Inside a ``Database.write()`` transaction: make the write transactions that call this
    with ``key`` run one after the other, from here to their commit, in every process on the
    database, so that what one checks here (nothing else holds X) still holds when it commits
    (it takes X), and the next one's check sees it.

    SQLite's ``write()`` is one writer at a time already (BEGIN IMMEDIATE). On PostgreSQL, a
    transaction-level advisory lock (released at commit or rollback); a statement after it sees
    what the previous holder committed, as every statement does under READ COMMITTED
    (PostgreSQL's default isolation level, which the writes here assume)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({int(key)})")


class Database:
    """An engine plus session factories: ``read()`` for queries, ``write()`` for changes."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        # Engines of the time-limited reads, by limit (made on first use; see read_limited).
        self._limited: dict[float, tuple[Engine, sessionmaker[Session]]] = {}
        self.engine = make_engine(url, echo=echo)
        # PostgreSQL reads run in autocommit: each statement sees committed data, and a search
        # saves the BEGIN and ROLLBACK round trips around it. SQLite's reads stay deferred
        # transactions (cheap there, and one snapshot across a page and its count).
        self._read_bind = self.engine if is_sqlite(self.engine) else \
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._sessions = sessionmaker(self._read_bind, expire_on_commit=False)
        # SQLite has one writer at a time, and a connection that finds the file locked sleeps
        # in steps of up to 100 ms before trying again: threads of one process (a worker's
        # streams and heartbeat) queue on this lock instead, and are woken the moment it is
        # free. Re-entrant, so a write nested in another on the same thread still works.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if is_sqlite(self.engine) else contextlib.nullcontext())

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading (never for writing: use ``write()``); rolled back at the end."""
        with self._sessions() as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextlib.contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A bare connection for one small read, without the ORM's session (a quarter of the
        CPU on SQLite: the site token looked up on every request of a site service)."""
        with self._read_bind.connect() as connection:
            try:
                yield connection
            finally:
                connection.rollback()

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction, committed on success and rolled back on error.

        On SQLite it starts with ``BEGIN IMMEDIATE`` so that reading and then writing in the same
        transaction never fails with "database is locked" when another process writes.
        """
        with self._write_lock:
            if is_sqlite(self.engine):
                connection = self.engine.connect().execution_options(sqlite_begin="IMMEDIATE")
            else:
                connection = self.engine.connect()
            with connection, Session(bind=connection, expire_on_commit=False) as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise

    def upgrade(self) -> None:
        """Create or upgrade the schema to the newest alembic revision.

        On PostgreSQL under an advisory lock: the servers of a site's users start together
        (after a hub restart or an upgrade), and two migrating one database at once fail on
        each other's tables; the second waits and then finds nothing to do."""
        from .migrations import upgrade

        if is_sqlite(self.engine):  # one server per SQLite file: nothing to race with
            upgrade(self.engine)
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
            lock.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})")
            try:
                upgrade(self.engine)
            finally:
                lock.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK})")

    @contextlib.contextmanager
    def read_limited(self, timeout_s: float) -> Iterator[Session]:
        """``read()`` for queries a request can make arbitrarily slow (searches): a statement
        running longer than ``timeout_s`` (0: no limit) is cancelled and ``QueryTimeout`` raised.

        PostgreSQL: ``statement_timeout`` set when the connection opens, on an engine of these
        reads' own (a ``SET`` per search would cost a round trip, and ``SET LOCAL`` needs a
        transaction these autocommit reads do not have). SQLite: a progress handler ends the
        read once it has run ``timeout_s`` in all.
        """
        if timeout_s <= 0:
            with self.read() as session:
                yield session
            return
        if is_sqlite(self.engine):
            with self.read() as session, _sqlite_deadline(session.connection(), timeout_s):
                yield session
            return
        with self._limited_sessions(timeout_s)() as session, _pg_timed_out(timeout_s):
            try:
                yield session
            finally:
                session.rollback()

    @contextlib.contextmanager
    def connect_limited(self, timeout_s: float) -> Iterator[Connection]:
        """``read_limited`` on a plain ``Connection`` rather than an ORM session, for reads of
        plain rows (a files search's page and instances): the session's set-up, its BEGIN
        bookkeeping and rollback were a sixth of a small search's CPU. On SQLite one deferred
        transaction (a snapshot across the read's statements), rolled back when the connection
        closes; on PostgreSQL autocommit, as ``read()``."""
        if is_sqlite(self.engine):
            with self.engine.connect() as connection:
                # BEGIN DEFERRED now, on the driver's connection: driver_rows' statements go
                # round SQLAlchemy, and its begin (an event and a statement executed through its
                # whole machinery) cost as much as the BEGIN itself. The connection's return to
                # the pool rolls the transaction back (the pool's reset on return).
                dbapi_connection = connection.connection.dbapi_connection
                assert dbapi_connection is not None  # the connection is open
                dbapi_connection.execute("BEGIN DEFERRED")
                if timeout_s <= 0:
                    yield connection
                    return
                with _sqlite_deadline(connection, timeout_s):
                    yield connection
            return
        if timeout_s <= 0:
            with self._read_bind.connect() as connection:
                yield connection
            return
        with self._limited_engine(timeout_s).connect() as connection, \
                _pg_timed_out(timeout_s):
            yield connection

    def run_limited(self, timeout_s: float, read: Callable[[Session], T]) -> T:
        """``read(session)`` in ``read_limited``; run once more, on a new connection, when its
        connection turned out to be dead (the database restarted since it was last used). The
        limited reads' pool does not ping a connection before each use: on PostgreSQL the ping
        was a round trip of its own, as long as a small search, on every search."""
        return _once_more_if_dead(lambda: self.read_limited(timeout_s), read)

    def run_limited_plain(self, timeout_s: float, read: Callable[[Connection], T]) -> T:
        """``run_limited`` on a plain ``Connection`` (``connect_limited``)."""
        return _once_more_if_dead(lambda: self.connect_limited(timeout_s), read)

    def _limited_engine(self, timeout_s: float) -> Engine:
        return self._limited_made(timeout_s)[0]

    def _limited_sessions(self, timeout_s: float) -> sessionmaker[Session]:
        return self._limited_made(timeout_s)[1]

    def _limited_made(self, timeout_s: float) -> tuple[Engine, sessionmaker[Session]]:
        # A server has one limit (its search timeout), so in practice one extra engine. No
        # pre-ping: its callers go through run_limited, which retries on a dead connection.
        made = self._limited.get(timeout_s)
        if made is None:
            ms = max(1, round(timeout_s * 1000))
            engine = create_engine(self.url, pool_size=5, max_overflow=20,
                                   isolation_level="AUTOCOMMIT",
                                   connect_args={"options": f"-c statement_timeout={ms}"})
            if engine.dialect.driver == "psycopg":
                _load_json_columns_fast(engine)
            # Two first searches at once: one engine is kept (it has not connected yet).
            made = self._limited.setdefault(
                timeout_s, (engine, sessionmaker(engine, expire_on_commit=False)))
            if made[0] is not engine:
                engine.dispose()
        return made

    def dispose(self) -> None:
        self.engine.dispose()
        for engine, _ in self._limited.values():
            engine.dispose()


def driver_mark(connection: Connection) -> str:
    """The driver's parameter placeholder for ``driver_rows``' SQL: SQLite's ``?``, psycopg's
    ``%s``."""
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def driver_rows(connection: Connection, sql: str, parameters: Any,
                fetch: bool = True) -> list[Any]:
    """The rows of ``sql`` (the driver's SQL and parameter style) as the driver's tuples, run on
    ``connection``'s DBAPI cursor: what ``exec_driver_sql(sql, parameters).all()`` returns,
    without SQLAlchemy's set-up per statement (an execution context, the result's metadata
    built from the cursor's description, a ``Row`` per row), which cost a third of the client's
    CPU of a 300-row search page on PostgreSQL. A driver error is raised as SQLAlchemy's
    ``DBAPIError`` and a lost connection invalidated, as ``exec_driver_sql`` does, so a time
    limit and ``run_limited``'s retry on a dead connection work the same. On SQLite the
    connection's transaction must have begun (``connect_limited``'s has)."""
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None  # the connection is open
    error = dialect.loaded_dbapi.Error
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql, parameters)
        if not fetch:  # a statement without rows (psycopg refuses to fetch from it)
            return []
        return cast("list[Any]", cursor.fetchall())  # both drivers return a list
    except error as exc:
        lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(sql, parameters, exc, error, dialect=dialect,
                                  connection_invalidated=lost) from exc
    finally:
        with contextlib.suppress(error):
            cursor.close()


def _once_more_if_dead(opened: Callable[[], contextlib.AbstractContextManager[Any]],
                       read: Callable[[Any], T]) -> T:
    """``read`` of what ``opened()`` yields; once more on a new one when its connection turned
    out to be dead."""
    try:
        with opened() as reading:
            return read(reading)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with opened() as reading:
        return read(reading)


@contextlib.contextmanager
def _pg_timed_out(timeout_s: float) -> Iterator[None]:
    """A PostgreSQL statement cancelled by ``statement_timeout`` as ``QueryTimeout``."""
    try:
        yield
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _PG_QUERY_CANCELED:
            raise QueryTimeout(timeout_s) from exc
        raise


@contextlib.contextmanager
def _sqlite_deadline(connection: Connection, timeout_s: float) -> Iterator[None]:
    """Interrupt ``connection``'s SQLite statements once ``timeout_s`` has passed, raising
    ``QueryTimeout`` (an interrupted statement raises "interrupted")."""
    deadline = time.monotonic() + timeout_s
    fired = False

    def progress() -> int:
        nonlocal fired
        fired = fired or time.monotonic() > deadline
        return int(fired)

    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None  # the connection is open
    dbapi_connection.set_progress_handler(progress, _SQLITE_PROGRESS_STEPS)
    try:
        yield
    except DBAPIError as exc:
        if fired:
            raise QueryTimeout(timeout_s) from exc
        raise
    finally:
        dbapi_connection.set_progress_handler(None, _SQLITE_PROGRESS_STEPS)


def default_sqlite_url(data_dir: str | os.PathLike[str]) -> str:
    """The embedded default database: a SQLite file in a local (never NFS) data directory."""
    return f"sqlite:///{Path(data_dir) / 'hera_stage.sqlite'}"
