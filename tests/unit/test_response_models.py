"""The messages API's answers are written by pydantic from the ``*Out`` models: a moment
must come out exactly as ``domain.clock.isoformat`` wrote it before (RFC 3339, UTC, "Z")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from mailgate.domain.clock import isoformat
from mailgate.schemas.out.base import UtcTimestamp

offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
moments = st.one_of(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=offsets),
    st.datetimes(min_value=datetime(1900, 1, 1), timezones=st.just(UTC)),
    st.sampled_from(
        [
            datetime(2026, 11, 29, 2, 30, 5, tzinfo=UTC),
            datetime(2026, 11, 29, 2, 30, 5, 120000, tzinfo=UTC),
            datetime(2026, 11, 29, 4, 30, 5, 1, tzinfo=timezone(timedelta(hours=2))),
        ]
    ),
)
timestamp = TypeAdapter(UtcTimestamp | None)


@given(moments)
def test_a_moment_is_written_as_isoformat_writes_it(moment: datetime) -> None:
    assert timestamp.dump_python(timestamp.validate_python(moment), mode="json") == isoformat(
        moment
    )
    assert (
        timestamp.dump_json(timestamp.validate_python(moment)).decode() == f'"{isoformat(moment)}"'
    )


def test_null_stays_null() -> None:
    assert timestamp.dump_json(timestamp.validate_python(None)) == b"null"
