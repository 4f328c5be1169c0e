"""The base of every response model, and the field shapes they share."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, WithJsonSchema

from mailgate.domain.access import Role
from mailgate.schemas.common import in_utc


class OutModel(BaseModel):
    """An answer validated from a service's view (a dict). Strict: a view value of the wrong
    type is an error in the tests, not a silent conversion that changes the JSON (an int
    turned float, a string turned number). Keys a model does not name are dropped."""

    model_config = ConfigDict(strict=True, extra="ignore")


class RowOutModel(BaseModel):
    """An answer a service builds directly from its rows (hot read paths: a page of messages
    is validated once, not per row through a dict); written by alias (``from``)."""

    model_config = ConfigDict(populate_by_name=True)


# RFC 3339 in UTC with a "Z" (domain.clock.isoformat), passed through as the view made it.
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
# The same written by pydantic from a datetime (models built from rows); exactly what
# domain.clock.isoformat writes (tests/unit/test_response_models.py compares the two).
UtcTimestamp = Annotated[datetime, AfterValidator(in_utc)]
# Views carry enum values as plain strings; lax validation accepts them.
RoleName = Annotated[Role, Strict(False)]


def _is_none(value: Any) -> bool:
    return value is None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def sometimes(description: str) -> Any:
    """A member that is absent, never ``null``, when it does not apply. Annotate it
    ``T | SkipJsonSchema[None]`` so the schema shows only ``T``, as not required."""
    return Field(
        default=None, exclude_if=_is_none, json_schema_extra=_no_default, description=description
    )
