"""RFC 9457 problem documents for every error, and the handlers that produce them."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailgate.adapters.db.health import RETRY_AFTER_S, is_unavailable
from mailgate.domain.errors import FieldError, MailgateError, Throttled, ValidationFailed
from mailgate.schemas.email_server import pydantic_field_errors

log = logging.getLogger("mailgate.api")
PROBLEM_JSON = "application/problem+json"

_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-failed",
    429: "too-many-requests",
    500: "internal-error",
    503: "database-unavailable",
}


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:mailgate:problem:{_SLUGS.get(status, 'error')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(MailgateError)
    async def _domain(_request: Request, exc: MailgateError) -> JSONResponse:
        errors = exc.errors if isinstance(exc, ValidationFailed) else None
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Throttled) else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return problem(exc.status, exc.title, exc.detail, errors, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = exc.errors()
        if any(e.get("type") == "json_invalid" for e in raw):
            return problem(400, "Malformed JSON", "the request body is not valid JSON")
        ctype = request.headers.get("content-type", "")
        if ctype and "json" not in ctype and any(tuple(e["loc"]) == ("body",) for e in raw):
            # FastAPI ignores a body that is not declared JSON; say why instead of "required".
            return problem(
                415,
                "Unsupported media type",
                f"send JSON with Content-Type: application/json, not {ctype[:100]}",
            )
        errors = pydantic_field_errors(exc)
        return problem(
            422, "Validation failed", "; ".join(f"{e.field}: {e.message}" for e in errors), errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
        return problem(
            exc.status_code, title, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # Handled here, not by the catch-all below: Starlette answers the catch-all's 500
        # and then re-raises, and uvicorn closes the connection, so the client's next
        # request on it was lost too. This answer keeps the keep-alive connection usable.
        if not is_unavailable(exc):
            return await _unexpected(request, exc)
        container = getattr(request.app.state, "container", None)
        if container is not None and not isinstance(exc, sa_exc.DBAPIError):
            # SQLAlchemy's handle_error hook has not seen a raw driver error.
            container.write_health.failed(exc)
        # The reason is logged once by WriteHealth, not per request.
        return problem(
            503,
            "Database unavailable",
            "the database cannot take the request now (e.g. disk full, read-only, connection "
            "lost); nothing was stored; try again later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for kind in (sa_exc.DBAPIError, sa_exc.TimeoutError, sqlite3.Error):
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Log the type and place only: exception texts can carry secrets (e.g. a DSN).
        log.error(
            "unhandled %s in %s %s",
            type(exc).__name__,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged")
