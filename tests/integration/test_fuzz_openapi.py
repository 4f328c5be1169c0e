"""Schema-driven fuzzing: schemathesis generates requests for every operation in /openapi.json
(valid and invalid ones) and sends them through the ASGI app as a system administrator.
No answer may be a 500, every error must be a problem document, and every success must match
the response schema the document gives for it.

Schemathesis keeps path parameters URL-friendly, so a second, plain hypothesis run puts any
text (NUL, control characters, non-ASCII, percent signs) into every path and query parameter.

Bounded: a fixed number of examples per operation, no shrinking, no example database, so a
run takes seconds and is the same size every time.
"""

from __future__ import annotations

import collections
from typing import Any
from urllib.parse import quote

import hypothesis.strategies as st
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from tests.conftest import Api, password_server

# Per operation and database: about 150 schemathesis cases and 200 parameter cases each.
SCHEMA_EXAMPLES = 5
PARAMETER_EXAMPLES = 8
# Operations that would end the fuzzer's own session (or the fixture it works on).
SKIP = {("POST", "/api/v1/auth/logout")}
# Any text; half the time one of the values that tend to break things (NUL, line breaks,
# numbers too big for a 64-bit column) or that reach existing resources.
ANY_TEXT = st.one_of(
    st.sampled_from(["a\x00b", "\r\n", "9" * 30, "%25", "..", "-", "DEFAULT", "home"]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=24),
)


def test_fuzz_api_finds_no_server_error(api: Api) -> None:
    admin = api.admin_token()
    api.client.cookies.clear()
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    assert r.status_code == 201, r.text
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    headers = {"Authorization": f"Bearer {admin}"}
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for op in operations:
        if (op.method.upper(), op.path) in SKIP:
            continue
        # Aim at existing resources often, so that requests get past the 404 of a random name.
        fixed: dict[str, Any] = {}
        deletes_tenant = op.method.upper() == "DELETE" and op.path == "/api/v1/tenants/{tenant}"
        if "{tenant}" in op.path and not deletes_tenant:
            fixed["tenant"] = "home"
        strategies = [
            op.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed or None),
            op.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed or None),
        ]

        fuzz_operation(op, strategies, headers, statuses, failures)

    assert not failures, "\n".join(sorted(set(failures))[:20])
    # Not vacuous: the fuzzer got past authentication and validation many times.
    assert sum(n for code, n in statuses.items() if code < 300) >= 20, statuses
    assert statuses[422] > 0 and statuses[404] > 0, statuses


def fuzz_operation(
    op: Any,
    strategies: list[Any],
    headers: dict[str, str],
    statuses: collections.Counter[int],
    failures: list[str],
) -> None:
    @settings(
        max_examples=SCHEMA_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies), existing=st.booleans())
    def fuzz(case: Any, existing: bool) -> None:
        if existing and "name" in (case.path_parameters or {}) and "email-servers" in op.path:
            case.path_parameters["name"] = "DEFAULT"
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path}: {response.text[:300]}")
        elif response.status_code >= 400:
            ctype = str(response.headers.get("content-type", ""))
            if "application/problem+json" not in ctype:
                failures.append(f"{case.method} {case.formatted_path}: not problem+json")
        else:
            try:
                op.validate_response(response)
            except AssertionError as exc:  # schemathesis's failures are AssertionErrors
                failures.append(f"{case.method} {case.formatted_path}: {exc}"[:600])

    fuzz()


def test_fuzz_path_and_query_parameters(api: Api) -> None:
    admin = api.admin_token()
    api.client.cookies.clear()
    headers = {"Authorization": f"Bearer {admin}"}
    failures: list[str] = []
    routes = 0
    for path, item in api.client.get("/openapi.json").json()["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            names = [p["name"] for p in params if p["in"] == "path"]
            queries = [p["name"] for p in params if p["in"] == "query"]
            if (method.upper(), path) in SKIP or not (names or queries):
                continue
            routes += 1
            fuzz_route(api, method.upper(), path, names, queries, headers, failures)
    assert routes >= 10
    assert not failures, "\n".join(sorted(set(failures))[:20])


def fuzz_route(
    api: Api,
    method: str,
    path: str,
    names: list[str],
    queries: list[str],
    headers: dict[str, str],
    failures: list[str],
) -> None:
    @settings(
        max_examples=PARAMETER_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        values=st.fixed_dictionaries({n: ANY_TEXT for n in names}),
        query=st.dictionaries(st.sampled_from(queries or ["q"]), ANY_TEXT, max_size=2),
    )
    def fuzz(values: dict[str, str], query: dict[str, str]) -> None:
        if method == "DELETE" and values.get("tenant") == "home":
            return
        url = path.format(**{k: quote(v, safe="") for k, v in values.items()})
        r = api.client.request(method, url, params=query, headers=headers, json={})
        if r.status_code >= 500:
            failures.append(f"{method} {url} {query}: {r.text[:200]}")

    fuzz()
