"""A local OAuth2 authorization server for tests (HTTPS on 127.0.0.1 with a trustme CA).

It is strict where real providers are strict, so that mailgate's flows are tested against
the protocol rather than against our own assumptions:

- authorize (``.../authorize``): checks client id, the registered redirect URI,
  ``response_type=code``, ``state`` and PKCE ``S256`` (RFC 7636); shows a consent page
  whose link the test "clicks" (:func:`consent`), then redirects with ``code`` and ``state``.
- token (``.../token``): ``authorization_code`` (client secret, redirect URI, PKCE verifier,
  single-use code), ``refresh_token`` (rotating: a used refresh token stops working, as
  RFC 9700 section 4.14.2 recommends), ``client_credentials``. Errors look like Microsoft's
  (HTTP 400 ``invalid_grant`` with an ``AADSTS`` description).
- :meth:`AuthServer.revoke` withdraws a consent; :meth:`AuthServer.token_is_live` is the
  introspection hook the test SMTP server uses to accept XOAUTH2 only with a live token, and
  :meth:`AuthServer.introspect` the one of the suite's Graph and Gmail API servers
  (``tests/api_peers.py``).
- Tokens for Microsoft Graph scopes are JWTs as Microsoft issues them (``aud``
  ``https://graph.microsoft.com``, ``scp`` for a delegated grant, ``roles`` for app-only: the
  client's granted application permissions); other tokens are opaque.

Any path prefix works, so one server plays Microsoft (``/ms/<tenant>/oauth2/v2.0/...``),
Google (``/google/...``) and a custom provider at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: set[str]
    # Mailboxes the app may send as with an app-only token (Add-MailboxPermission, or
    # Exchange RBAC for Applications for Graph).
    app_mailboxes: set[str] = field(default_factory=set)
    # Microsoft Graph application permissions with admin consent (the roles of app-only
    # Graph tokens).
    graph_roles: set[str] = field(default_factory=lambda: {"Mail.Send", "Mail.ReadWrite"})


@dataclass
class GrantRecord:
    """One consent: a user allowed a client. Revoking it kills its refresh tokens."""

    id: str
    client_id: str
    user: str | None
    scope: str
    revoked: bool = False
    path: str = ""
    """The token endpoint that issued it (which provider: ``/ms/...`` or ``/google/...``)."""


GRAPH = "https://graph.microsoft.com"


@dataclass(frozen=True)
class TokenInfo:
    """What the authorization server knows about an access token (introspection)."""

    client_id: str
    user: str | None
    scope: str
    path: str
    live: bool
    audience: str | None
    scopes: list[str]
    roles: list[str]
    app_mailboxes: set[str]


@dataclass
class TokenRequest:
    """A logged call of the token endpoint, for assertions."""

    path: str
    grant_type: str
    form: dict[str, str]
    status: int


class AuthServer:
    def __init__(self) -> None:
        self.base_url = ""
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/{prefix:path}/authorize", self._authorize, methods=["GET"]),
                Route("/consent/{request_id}", self._consent, methods=["GET"]),
                Route("/{prefix:path}/token", self._token, methods=["POST"]),
            ]
        )
        self.reset()

    def reset(self, user: str = "sender@example.com") -> None:
        """Forget everything (the server runs for the whole session; each test starts clean)."""
        self.user = user
        self.clients: dict[str, Client] = {}
        self.access_token_ttl = 3600
        self.client_secret_expires_at: int | None = None
        self.outage: int | None = None  # HTTP status the token endpoint answers with
        self.consent_decision = "accept"
        self.token_delay = 0.0  # seconds the token endpoint takes (to widen race windows)
        self.requests: list[TokenRequest] = []
        self._jwt_key = secrets.token_bytes(32)
        self.jwt_for_all = False
        """Also issue JWTs for non-Graph resources (e.g. an SMTP token, to see its audience)."""
        self._pending: dict[str, dict[str, str]] = {}
        self._codes: dict[str, dict[str, Any]] = {}
        self._grants: dict[str, GrantRecord] = {}
        self._access: dict[str, tuple[GrantRecord, float]] = {}
        self._refresh: dict[str, tuple[GrantRecord, bool]] = {}

    # ---- test controls ---------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: set[str] | None = None,
        app_mailboxes: set[str] | None = None,
    ) -> Client:
        client = Client(client_id, client_secret, redirect_uris or set(), app_mailboxes or set())
        self.clients[client_id] = client
        return client

    def revoke(self, client_id: str | None = None) -> int:
        """Withdraw every consent (of one client); returns how many were revoked."""
        with self._lock:
            count = 0
            for grant in self._grants.values():
                if client_id is None or grant.client_id == client_id:
                    grant.revoked = True
                    count += 1
            return count

    def token_is_live(self, token: str, user: str) -> bool:
        """Introspection: is ``token`` an unexpired access token valid for mailbox ``user``?"""
        with self._lock:
            entry = self._access.get(token)
            if entry is None:
                return False
            grant, expires = entry
            if grant.revoked or time.time() >= expires:
                return False
            if grant.user is None:  # app-only token: needs mailbox permission
                return user in self.clients[grant.client_id].app_mailboxes
            return grant.user == user

    def introspect(self, token: str) -> TokenInfo | None:
        """The token's grant as the suite's API servers check it; ``None`` if never issued."""
        with self._lock:
            entry = self._access.get(token)
            if entry is None:
                return None
            grant, expires = entry
            client = self.clients.get(grant.client_id)
            claims = _claims_of(token)
            return TokenInfo(
                client_id=grant.client_id,
                user=grant.user,
                scope=grant.scope,
                path=grant.path,
                live=not grant.revoked and time.time() < expires,
                audience=claims.get("aud") if claims else None,
                scopes=str(claims.get("scp", "")).split() if claims else grant.scope.split(),
                roles=list(claims.get("roles", [])) if claims else [],
                app_mailboxes=set(client.app_mailboxes) if client else set(),
            )

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expire now (as time passing would)."""
        with self._lock:
            for token, (grant, _expires) in list(self._access.items()):
                self._access[token] = (grant, 0.0)

    def refresh_requests(self) -> list[TokenRequest]:
        return [r for r in self.requests if r.grant_type == "refresh_token"]

    # ---- endpoints -------------------------------------------------------------------------

    async def _authorize(self, request: Request) -> Response:
        q = dict(request.query_params)
        client = self.clients.get(q.get("client_id", ""))
        if client is None:
            return HTMLResponse("AADSTS700016: application not found", status_code=400)
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            # Never redirect to an unregistered URI (RFC 6749 section 4.1.2.1).
            return HTMLResponse("AADSTS50011: redirect URI mismatch", status_code=400)
        problems = []
        if q.get("response_type") != "code":
            problems.append("response_type must be code")
        if not q.get("state"):
            problems.append("state missing")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            problems.append("PKCE S256 required")
        if not q.get("scope"):
            problems.append("scope missing")
        if problems:
            return _redirect(
                redirect_uri,
                error="invalid_request",
                error_description="; ".join(problems),
                state=q.get("state", ""),
            )
        request_id = secrets.token_urlsafe(16)
        self._pending[request_id] = {**q, "path": request.url.path}
        link = html.escape(f"/consent/{request_id}")
        return HTMLResponse(
            f'<p>Allow {html.escape(client.client_id)}?</p><a href="{link}">Accept</a>'
        )

    async def _consent(self, request: Request) -> Response:
        q = self._pending.pop(request.path_params["request_id"], None)
        if q is None:
            return HTMLResponse("unknown request", status_code=400)
        if self.consent_decision != "accept":
            return _redirect(
                q["redirect_uri"],
                error="access_denied",
                error_description="AADSTS65004: User declined to consent to access the app.",
                state=q["state"],
            )
        with self._lock:
            grant = GrantRecord(
                secrets.token_hex(8),
                q["client_id"],
                self.user,
                q["scope"],
                path=q["path"].rsplit("/", 1)[0],
            )
            self._grants[grant.id] = grant
            code = secrets.token_urlsafe(24)
            self._codes[code] = {
                "grant": grant,
                "redirect_uri": q["redirect_uri"],
                "challenge": q["code_challenge"],
                "expires": time.time() + 300,
                "used": False,
            }
        return _redirect(q["redirect_uri"], code=code, state=q["state"])

    async def _token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        grant_type = form.get("grant_type", "")
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        status, body = self._issue(request, form, grant_type)
        self.requests.append(TokenRequest(request.url.path, grant_type, form, status))
        if status >= 500:
            return Response("upstream unavailable", status_code=status)
        return JSONResponse(body, status_code=status)

    def _issue(self, request: Request, form: dict[str, str], grant_type: str) -> tuple[int, Any]:
        if self.outage is not None:
            return self.outage, None
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            decoded = base64.b64decode(header[6:]).decode()
            client_id, _, client_secret = decoded.partition(":")
        client = self.clients.get(client_id)
        if client is None:
            return 400, _error(
                "unauthorized_client", "AADSTS700016: Application not found in the directory."
            )
        if not secrets.compare_digest(client.client_secret, client_secret):
            return 401, _error("invalid_client", "AADSTS7000215: Invalid client secret provided.")
        with self._lock:
            if grant_type == "authorization_code":
                return self._from_code(client, form)
            if grant_type == "refresh_token":
                return self._from_refresh(client, form)
            if grant_type == "client_credentials":
                grant = GrantRecord(
                    secrets.token_hex(8),
                    client.client_id,
                    None,
                    form["scope"],
                    path=request.url.path.rsplit("/", 1)[0],
                )
                self._grants[grant.id] = grant
                return 200, self._tokens(grant, refresh=False)
        return 400, _error("unsupported_grant_type", f"AADSTS70003: {grant_type!r}")

    def _from_code(self, client: Client, form: dict[str, str]) -> tuple[int, Any]:
        entry = self._codes.get(form.get("code", ""))
        if entry is None or entry["used"] or entry["expires"] < time.time():
            return 400, _error(
                "invalid_grant", "AADSTS54005: OAuth2 Authorization code was already redeemed."
            )
        entry["used"] = True
        grant: GrantRecord = entry["grant"]
        if grant.client_id != client.client_id:
            return 400, _error("invalid_grant", "AADSTS70002: code issued to another client.")
        if form.get("redirect_uri") != entry["redirect_uri"]:
            return 400, _error("invalid_grant", "AADSTS50148: redirect_uri does not match.")
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if not verifier or challenge != entry["challenge"]:
            return 400, _error("invalid_grant", "AADSTS501481: The Code_Verifier does not match.")
        return 200, self._tokens(grant, refresh=True)

    def _from_refresh(self, client: Client, form: dict[str, str]) -> tuple[int, Any]:
        entry = self._refresh.get(form.get("refresh_token", ""))
        if entry is None:
            return 400, _error("invalid_grant", "AADSTS9002313: Invalid refresh token.")
        grant, used = entry
        if grant.client_id != client.client_id:
            return 400, _error("invalid_grant", "AADSTS9002313: token of another client.")
        if grant.revoked:
            return 400, _error(
                "invalid_grant",
                "AADSTS50173: The provided grant has expired due to it being revoked, a fresh "
                "auth token is needed. The user might have changed or reset their password.",
            )
        if used:
            return 400, _error("invalid_grant", "AADSTS70000: The refresh token was already used.")
        self._refresh[form["refresh_token"]] = (grant, True)
        return 200, self._tokens(grant, refresh=True)

    def _tokens(self, grant: GrantRecord, *, refresh: bool) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        if GRAPH in grant.scope or (self.jwt_for_all and "https://" in grant.scope):
            access = self._jwt(grant)
        self._access[access] = (grant, time.time() + self.access_token_ttl)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "scope": grant.scope,
        }
        if refresh:
            token = "rt-" + secrets.token_urlsafe(24)
            self._refresh[token] = (grant, False)
            body["refresh_token"] = token
        if self.client_secret_expires_at is not None:
            body["client_secret_expires_at"] = self.client_secret_expires_at
        return body

    def _jwt(self, grant: GrantRecord) -> str:
        """An access token shaped like Microsoft's (the claims mailgate reads): the audience
        is the scope's resource, ``scp`` the delegated permissions, ``roles`` app-only's."""
        now = int(time.time())
        resource = next(
            (s.rsplit("/", 1)[0] for s in grant.scope.split() if s.startswith("https://")), GRAPH
        )
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"{self.base_url}{grant.path}",
            "iat": now,
            "exp": now + self.access_token_ttl,
            "appid": grant.client_id,
            "jti": secrets.token_hex(8),
        }
        if grant.user is None:
            roles = sorted(self.clients[grant.client_id].graph_roles)
            if roles:  # without admin consent Microsoft issues the token without roles
                claims["roles"] = roles
            claims["app_displayname"] = grant.client_id
        else:
            claims["scp"] = " ".join(
                s.removeprefix(resource + "/")
                for s in grant.scope.split()
                if s.startswith(resource)
            )
            claims["upn"] = grant.user
        signed = _b64url({"alg": "HS256", "typ": "JWT"}) + "." + _b64url(claims)
        mac = hmac.new(self._jwt_key, signed.encode("ascii"), hashlib.sha256).digest()
        return signed + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _b64url(value: dict[str, Any]) -> str:
    data = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims_of(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
    return claims


def _error(error: str, description: str) -> dict[str, Any]:
    return {
        "error": error,
        "error_description": description,
        "error_codes": [int(description[6:].split(":")[0])] if description[:6] == "AADSTS" else [],
        "trace_id": secrets.token_hex(8),
    }


def _redirect(uri: str, **params: str) -> Response:
    sep = "&" if urlsplit(uri).query else "?"
    return RedirectResponse(uri + sep + urlencode(params), status_code=302)


class RunningAuthServer:
    """The server running in a thread, with its URLs and CA file."""

    def __init__(self, server: AuthServer, ca: trustme.CA, tmp: Path) -> None:
        self.server = server
        self.ca = ca
        """The CA of every HTTPS peer of the suite (one CA file for mailgate to trust)."""
        self.ca_file = tmp / "oauth-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self._pem = tmp / "oauth-server.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(self._pem))
        config = uvicorn.Config(
            server.app,
            host="127.0.0.1",
            port=0,
            ssl_certfile=str(self._pem),
            ssl_keyfile=str(self._pem),
            log_level="warning",
            lifespan="off",
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._uvicorn.serve())

    def start(self) -> None:
        self._thread.start()
        deadline = time.time() + 10
        while not self._uvicorn.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("the local OAuth2 server did not start")
            time.sleep(0.01)
        port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        self.server.base_url = f"https://127.0.0.1:{port}"

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def microsoft_authority(self) -> str:
        return self.base_url + "/ms"

    @property
    def google_authorize_url(self) -> str:
        return self.base_url + "/google/authorize"

    @property
    def google_token_url(self) -> str:
        return self.base_url + "/google/token"

    def settings(self) -> dict[str, Any]:
        """``Settings`` overrides pointing mailgate at this server."""
        return {
            "oauth_microsoft_authority": self.microsoft_authority,
            "oauth_google_authorize_url": self.google_authorize_url,
            "oauth_google_token_url": self.google_token_url,
            "oauth_ca_bundle": self.ca_file,
        }

    def consent(self, authorization_url: str) -> str:
        """Play the browser: open the authorization URL, click Accept, and return the
        redirect target (mailgate's callback URL with ``code`` and ``state``)."""
        with httpx.Client(verify=str(self.ca_file), follow_redirects=False) as http:
            page = http.get(authorization_url)
            if page.status_code != 200:
                raise AssertionError(f"authorize refused: {page.status_code} {page.text}")
            href = page.text.split('href="', 1)[1].split('"', 1)[0]
            answer = http.get(self.base_url + html.unescape(href))
            assert answer.status_code == 302, answer.text
            return answer.headers["location"]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def start_auth_server(tmp: Path) -> Iterator[RunningAuthServer]:
    running = RunningAuthServer(AuthServer(), trustme.CA(), tmp)
    running.start()
    try:
        yield running
    finally:
        running.stop()
