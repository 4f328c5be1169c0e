"""A few hot reads run on SQLite's DBAPI connection directly, with SQLAlchemy's own types.

A SQLAlchemy execution costs far more than the read: the submission's one-statement lookup
(an indexed join of three small tables) takes 6 us in SQLite and 42 us through
``Connection.execute`` (execution context, compiled-cache lookup, parameter and result
processing through its layers). ``PreparedSelect`` compiles the statement once for the
dialect and keeps what SQLAlchemy would do per execution that matters to the result: each
parameter through its type's bind processor, each column through its type's result processor
(``tests/integration/test_prepared_select.py`` pins the rows to ``Connection.execute``'s).

Only for SQLite, whose reads run on the event loop; on PostgreSQL the round trip dominates
and the statement goes through SQLAlchemy as usual (``run`` does that itself).
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, literal_column, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from mailgate.adapters.db.health import is_unavailable, mark_wrote

RAW = True
"""Run ``PreparedStatement``s on SQLite's DBAPI connection (tests switch it off to compare the
rows with SQLAlchemy's path)."""

_Processor = Callable[[Any], Any] | None
_Compiled = tuple[str, list[tuple[str, Any, _Processor]], list[_Processor]]


def in_json(column: Any, name: str = "ids") -> Any:
    """``column IN`` the values of one JSON-array parameter ``name`` (SQLite's
    ``json_each``): a list for ``PreparedStatement``, which takes no expanding ``IN``."""
    return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(name))))


def as_json(values: Iterable[Any]) -> str:
    """A list for ``in_json``'s parameter."""
    return json.dumps(list(values))


def raw_sqlite(conn: Connection) -> bool:
    """Whether ``conn``'s hot statements go through ``PreparedStatement`` (SQLite, unless
    turned off)."""
    return RAW and conn.dialect.name == "sqlite"


class PreparedStatement:
    """``statement`` (a SELECT, an INSERT/UPDATE/DELETE with or without RETURNING; no
    expanding parameters: on SQLite give a list as JSON and read it with ``json_each``)
    compiled once per dialect, run on the SQLite DBAPI connection by ``rows`` and
    ``many``. ``column_keys``: an INSERT's columns (the keys of each row given to it)."""

    def __init__(
        self, statement: ClauseElement, *, column_keys: Sequence[str] | None = None
    ) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, _Compiled] = {}
        self._named: Any = None
        self.writes = not isinstance(statement, Select)

    def _for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
            assert isinstance(compiled, SQLCompiler)
            if compiled.insert_prefetch or compiled.update_prefetch:
                # Python-side column defaults are filled in by SQLAlchemy's execution.
                missing = [c.key for c in [*compiled.insert_prefetch, *compiled.update_prefetch]]
                raise ValueError(
                    f"PreparedStatement cannot fill in Python-side defaults: {missing}"
                )
            names = compiled.positiontup or []
            params: list[tuple[str, Any, _Processor]] = []
            for name in names:
                bind = compiled.binds[name]
                if bind.expanding:
                    raise ValueError("PreparedStatement does not take expanding parameters")
                impl = bind.type.dialect_impl(dialect)
                # A value given in the statement itself (not a bindparam() to fill in).
                given = bind.callable is not None or bind.value is not None
                params.append(
                    (name, bind.effective_value if given else None, impl.bind_processor(dialect))
                )
            columns = getattr(self.statement, "exported_columns", ())
            results: list[_Processor] = [
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in columns
            ]
            found = (str(compiled), params, results)
            self._compiled[dialect.name] = found
        return found

    def _driver(self, conn: Connection) -> Any:
        if conn.dialect.name != "sqlite":
            raise ValueError("PreparedStatement runs on SQLite only")
        if self.writes:
            # What SQLAlchemy's own execution would have told WriteHealth (health.py).
            mark_wrote(conn)
        return conn.connection.driver_connection

    @staticmethod
    def _args(params: list[tuple[str, Any, _Processor]], values: Mapping[str, Any]) -> list[Any]:
        args = []
        for name, fixed, process in params:
            value = values.get(name, fixed)
            args.append(process(value) if process is not None else value)
        return args

    def rows(self, conn: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run once; the rows (a SELECT's, or RETURNING's), as tuples in column order."""
        sql, params, results = self._for(conn.dialect)
        driver = self._driver(conn)
        args = self._args(params, values)
        try:
            # fetchall: the statement runs to its end, so no read snapshot outlives the call.
            rows = driver.execute(sql, args).fetchall()
        except Exception as exc:
            raise _wrapped(conn, sql, exc) from exc
        if not any(results):
            return rows  # type: ignore[no-any-return]
        return [
            tuple(p(v) if p is not None else v for p, v in zip(results, row, strict=True))
            for row in rows
        ]

    def named(self, conn: Connection, values: Mapping[str, Any]) -> list[Any]:
        """``rows`` as named tuples, by column name as SQLAlchemy's rows are."""
        if self._named is None:
            names = [column.key for column in getattr(self.statement, "exported_columns", ())]
            self._named = namedtuple("Row", names)  # type: ignore[misc]
        return [self._named(*row) for row in self.rows(conn, values)]

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row of ``rows`` (``executemany``)."""
        if not rows:
            return
        sql, params, _results = self._for(conn.dialect)
        if self.column_keys is not None and set(rows[0]) != set(self.column_keys):
            raise ValueError(f"rows with {sorted(rows[0])}, not {sorted(self.column_keys)}")
        driver = self._driver(conn)
        try:
            driver.executemany(sql, [self._args(params, row) for row in rows])
        except Exception as exc:
            raise _wrapped(conn, sql, exc) from exc


def _wrapped(conn: Connection, sql: str, exc: Exception) -> BaseException:
    """The driver's error as SQLAlchemy would have raised it (``IntegrityError``,
    ``OperationalError``, ...; no parameters in its text), and told to ``WriteHealth`` as
    SQLAlchemy's ``handle_error`` event would have."""
    dialect = conn.dialect
    wrapped = sa_exc.DBAPIError.instance(
        sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True, dialect=dialect
    )
    health = getattr(dialect, "_mailgate_health", None)
    if health is not None and is_unavailable(wrapped):
        health.failed(wrapped)
    return wrapped


class PreparedSelect(PreparedStatement):
    """A SELECT: ``run`` takes the DBAPI connection on SQLite, SQLAlchemy elsewhere."""

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        super().__init__(statement)
        self.select = statement

    def run(self, conn: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows, as tuples in the statement's column order."""
        if not raw_sqlite(conn):
            return [tuple(row) for row in conn.execute(self.select, dict(values))]
        return self.rows(conn, values)
