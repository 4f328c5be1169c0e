"""The web admin UI: server-rendered page shells (Jinja2) plus plain JS modules that call the
JSON API with the session cookie and the ``X-CSRF-Token`` header. Every asset is served from
here; nothing is fetched from the internet at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from mailgate import __version__

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=_HERE / "templates")

# Pages of the signed-in application: URL path -> (script module, title).
APP_PAGES: dict[str, tuple[str, str]] = {
    "email-servers": ("servers", "E-mail servers"),
    "messages": ("messages", "Messages"),
    "api-keys": ("apikeys", "API keys"),
    "remote-clients": ("remote", "Remote clients"),
    "webhooks": ("webhooks", "Webhooks"),
    "audit": ("audit", "Audit log"),
    "tenants": ("tenants", "Tenants"),
    "users": ("users", "Users"),
    "system-email-server": ("system_server", "System e-mail server"),
    "system-settings": ("system_settings", "System settings"),
    "account": ("account", "My account"),
}
AUTH_PAGES = {
    "login": "Sign in",
    "forgot-password": "Forgot password",
    "reset-password": "Choose a new password",
}

# The pages hold no data (the scripts fetch it), but they must never be framed or cached.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def _render(
    request: Request, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {"version": __version__, **context},
        status_code=status_code,
        headers=_HEADERS,
    )


@router.get("/")
def root() -> Response:
    return RedirectResponse("/ui/", status_code=302)


@router.get("/ui")
@router.get("/ui/")
def ui_home() -> Response:
    return RedirectResponse("/ui/email-servers", status_code=302)


@router.get("/ui/{page}")
@router.get("/ui/{page}/{item}")
def ui_page(request: Request, page: str, item: str | None = None) -> Response:
    if page in AUTH_PAGES and item is None:
        return _render(request, "auth.html", page=page, title=AUTH_PAGES[page])
    if page in APP_PAGES and (item is None or page in ("email-servers", "messages")):
        module, title = APP_PAGES[page]
        return _render(
            request,
            "app.html",
            page=page,
            module=module,
            title=title,
            item=item,
            redirect_uri=default_redirect_uri(request),
        )
    return _render(request, "not_found.html", title="Not found", page=page, status_code=404)


def oauth2_callback_failed(
    request: Request, message: str, back_url: str, back_label: str
) -> HTMLResponse:
    """The OAuth2 callback's answer to a person when its state is unknown, used or expired:
    what happened and the way back, in the UI's style (400, as the API contract says)."""
    return _render(
        request,
        "oauth2_failed.html",
        status_code=400,
        title="Authorization not completed",
        message=message[:1].upper() + message[1:],
        back_url=back_url,
        back_label=back_label,
    )


def default_redirect_uri(request: Request) -> str:
    """The OAuth2 redirect URI a configuration gets when it names none (README "OAuth2 for
    SMTP"): the form shows it before the first save, so it can be registered first."""
    base: str = request.app.state.container.servers.public_base_url
    return base.rstrip("/") + "/settings/oauth2code"


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="ui-static")
    app.include_router(router)
