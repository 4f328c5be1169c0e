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

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Select
from sqlalchemy.engine import Dialect

_Processor = Callable[[Any], Any] | None
_Compiled = tuple[str, list[tuple[str, Any, _Processor]], list[_Processor]]


class PreparedSelect:
    """``statement`` (a SELECT without expanding parameters) compiled once per dialect."""

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            names = compiled.positiontup or []
            params: list[tuple[str, Any, _Processor]] = []
            for name in names:
                bind = compiled.binds[name]
                if bind.expanding:
                    raise ValueError("PreparedSelect does not take expanding parameters")
                impl = bind.type.dialect_impl(dialect)
                # A value given in the statement itself (not a bindparam() to fill in).
                fixed = (
                    None if bind.callable is None and bind.value is None else bind.effective_value
                )
                params.append((name, fixed, impl.bind_processor(dialect)))
            results: list[_Processor] = [
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in self.statement.selected_columns
            ]
            found = (str(compiled), params, results)
            self._compiled[dialect.name] = found
        return found

    def run(self, conn: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows, as tuples in the statement's column order."""
        if conn.dialect.name != "sqlite":
            return [tuple(row) for row in conn.execute(self.statement, dict(values))]
        sql, params, results = self._for(conn.dialect)
        args = []
        for name, fixed, process in params:
            value = values.get(name, fixed)
            args.append(process(value) if process is not None else value)
        driver: Any = conn.connection.driver_connection
        # fetchall: the statement runs to its end, so no read snapshot outlives the call.
        rows = driver.execute(sql, args).fetchall()
        if not any(results):
            return rows  # type: ignore[no-any-return]
        return [
            tuple(p(v) if p is not None else v for p, v in zip(results, row, strict=True))
            for row in rows
        ]
