"""Database connections around network waits.

A step waits seconds on a model or an HTTP call. A connection checked out of the process's
psycopg pool for that wait does nothing but count against `DB_POOL_MAX_SIZE` and PostgreSQL's
`max_connections`, so under a gevent pool (thousands of calls in flight) it would cap the
concurrency at the pool size. `release_connection()` gives it back before such a call; the
next query takes one again (a pooled connection: no new login). A connection the server dropped
meanwhile is replaced, and a guarded write that met it tried again (`reconnecting`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError, OperationalError, close_old_connections, connection
from django.db.transaction import TransactionManagementError


def release_connection() -> bool:
    """Give this thread's (greenlet's) connection back before a wait. Not inside a transaction:
    an open transaction (a row lock, uncommitted writes) must keep its connection, so a caller
    in `transaction.atomic` simply keeps it. SQLite holds no server resource: kept. Returns
    whether a connection was given back."""
    if connection.vendor == "sqlite" or connection.connection is None:
        return False
    if connection.in_atomic_block:
        return False
    connection.close()
    return True


# --- a connection lost during a wait ------------------------------------------------------------
#
# PostgreSQL may drop a connection while it sits idle in the pool (a restart, a failover,
# `pg_terminate_backend`, an idle timeout, a network cut); psycopg's pool hands it out again
# unchecked, and the first statement after a step's model or HTTP wait then fails. For a write
# that is guarded (fenced by the attempt number, so applying it twice is a no-op), giving up
# would throw away the result of a call that was made: `reconnecting` takes a fresh connection
# and tries the write again, a bounded number of times, for connection errors only.

# SQLSTATEs of a server that ended the session: admin_shutdown (pg_terminate_backend),
# crash_shutdown, cannot_connect_now; and class 08, connection exceptions.
_LOST_SQLSTATES = {"57P01", "57P02", "57P03"}
RECONNECT_TRIES = 4
RECONNECT_BACKOFF = 0.05  # seconds, doubled after each try

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _lost(exc: BaseException) -> bool:
    if connection.vendor == "sqlite":
        return isinstance(exc, sqlite3.ProgrammingError) and "closed database" in str(exc)
    import psycopg
    from psycopg_pool import PoolTimeout

    if isinstance(exc, PoolTimeout):  # no connection free: waiting longer is the task's retry
        return False
    if not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    # No SQLSTATE: the client saw the socket close ("server closed the connection
    # unexpectedly", "the connection is closed"); a server error always carries one.
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _LOST_SQLSTATES


def _broken() -> bool:
    raw = connection.connection
    return raw is not None and bool(getattr(raw, "closed", False))


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors behind it (Django wraps the driver's error as its cause)."""
    found: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return found


def _pool_timeout(exc: BaseException) -> bool:
    if connection.vendor != "postgresql":
        return False
    from psycopg_pool import PoolTimeout

    return any(isinstance(e, PoolTimeout) for e in _chain(exc))


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` comes from a lost database connection: the error itself or one in its
    chain, or a later error on a connection that is now broken (Django's "An error occurred
    in the current transaction", a "connection already closed" after the first failure was
    swallowed)."""
    if any(_lost(e) for e in _chain(exc)):
        return True
    return isinstance(exc, (DatabaseError, TransactionManagementError)) and _broken()


def reset_connection() -> None:
    """Drop this thread's (greenlet's) broken connection (the pool discards it) and the pool's
    idle connections that no longer answer, so the next query gets a working one."""
    with contextlib.suppress(Exception):
        connection.close()
    close_old_connections()
    pool = getattr(connection, "pool", None) if connection.vendor == "postgresql" else None
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.check()  # the server ended the others too, most likely (a restart, a kill)


def _ended(raw: Any) -> bool:
    """Whether the connection `raw` that a write began on is gone, broken or replaced: after
    the write, the sign that its transaction did not commit even if nothing was raised. Django
    rolls back quietly when an error was swallowed inside the block (a receiver's savepoint
    logs and goes on); when that rollback fails too it drops the connection, and leaving the
    block takes a new one (autocommit is set back on it)."""
    return connection.connection is None or connection.connection is not raw or _broken()


def reconnecting(
    write: Callable[[], T], *, tries: int = RECONNECT_TRIES, backoff: float = RECONNECT_BACKOFF
) -> T:
    """Run `write` (its own transaction, fenced so that a second application is a no-op) and,
    if the connection is lost (raised, or swallowed and the transaction quietly rolled back),
    reconnect and run it again: at most `tries` times in all, then the error is raised as
    before. Any other error is raised at once, and so is a lost connection inside an
    enclosing transaction (its earlier writes are gone with it)."""
    for attempt in range(1, tries + 1):
        reason: BaseException | str
        raw: Any = None
        try:
            connection.ensure_connection()
            raw = connection.connection
            result = write()
        except Exception as exc:
            if attempt >= tries or connection.in_atomic_block:
                raise
            if not (connection_lost(exc) or (_ended(raw) and not _pool_timeout(exc))):
                raise
            reason = exc
        else:
            if connection.in_atomic_block or not _ended(raw):
                return result
            if attempt >= tries:
                raise OperationalError("The database connection was lost; the write was undone.")
            reason = "the connection ended with the transaction"
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
        logger.warning(
            "database connection lost (%s: %s); reconnecting, try %s of %s",
            reason.__class__.__name__,
            text,
            attempt + 1,
            tries,
        )
        reset_connection()
        time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


# --- hot reads without the ORM's query building -------------------------------------------------
#
# The engine reads a few rows on every step (the tool a node names, the project's policies).
# Building those queries through the ORM costs more CPU than the database spends answering
# them (about a third of a queued builtin step's CPU, profiled), so they are written once here
# as SQL and their rows turned into model instances as the ORM would.


def model_columns(model: Any) -> list[Any]:
    """A model's concrete fields, in the order `select_models` reads them."""
    return list(model._meta.concrete_fields)


def model_from_row(model: Any, values: list[Any]) -> Any:
    """A model instance from a row of `model_columns(model)`, converted as the ORM does."""
    names, converters = _converters(model, connection.vendor)
    converted = list(values)
    for index, column, functions in converters:
        value = converted[index]
        for converter in functions:
            value = converter(value, column, connection)
        converted[index] = value
    return model.from_db(connection.alias, names, converted)


@functools.cache
def _converters(model: Any, vendor: str) -> tuple[list[str], list[tuple[int, Any, list[Any]]]]:
    """The attribute names of `model_columns(model)` and, for each column that has any, its
    converters as the ORM's compiler takes them: the backend's, then the field's; a foreign
    key's are its target's (a UUID key comes back from SQLite as text). Worked out once per
    model and database vendor: they depend on nothing else, and each call gets the
    connection."""
    fields = model_columns(model)
    converters = []
    for index, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if functions:
            converters.append((index, column, functions))
    return [field.attname for field in fields], converters


def select_models(
    model: Any, where: str, params: list[Any], *, order_by: str = "id", limit: int | None = None
) -> list[Any]:
    """`SELECT <every column> FROM <table> WHERE <where> ORDER BY <order_by> [LIMIT n]`, as model
    instances. `where` and `order_by` are the caller's SQL (columns by name, `%s` parameters),
    written for both PostgreSQL and SQLite; `params` already prepared for the database."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in model_columns(model))
    sql = f"SELECT {columns} FROM {quote(model._meta.db_table)} WHERE {where} ORDER BY {order_by}"  # noqa: S608
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [model_from_row(model, list(row)) for row in rows]
