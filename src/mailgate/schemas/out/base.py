"""The base of every response model, and the field shapes they share."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, WithJsonSchema

from mailgate.domain.access import Role


class OutModel(BaseModel):
    """Strict: a view value of the wrong type is an error in the tests, not a silent
    conversion that changes the JSON (an int turned float, a string turned number). Keys
    a model does not name are dropped."""

    model_config = ConfigDict(strict=True, extra="ignore")


# RFC 3339 in UTC with a "Z" (domain.clock.isoformat), passed through as the view made it.
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
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
