"""Deterministic fuzzing of every operation in the OpenAPI schema, plus the pages, through Django's
test client: no input may give a server error (issue 17).

Seeded (``random.Random(SEED)``), so a failure names a request that reproduces on every run. The
inputs the attack found are explicit examples sent to every operation before the random ones: a NUL
byte in every query parameter, path parameter and JSON string; unpaired surrogates; JSON nested
1,000 deep; huge finite numbers; wrong types. Two passes, anonymous and authenticated (a user with
every role), at least 10,000 requests in all.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from django.test import Client

SEED = 17
RANDOM_CASES_PER_OPERATION = 64
MIN_REQUESTS = 10_000

NASTY_STRINGS = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "\U0001f600",
    "",
    " ",
    "'; DROP TABLE x; --",
    "%00",
    "../../etc/passwd",
    "9" * 400,
    "-1",
    "1e309",
    "NaN",
    "true",
    "null",
    "2026-02-30",
    "2026-12-08T25:61:00",
    "\u202e",
    "x" * 5000,
]
NASTY_NUMBERS: list[Any] = [
    0,
    -1,
    1e308,
    -1e308,
    10**30,
    -(10**30),
    2**63,
    2**31,
    1.5,
    10**4000,
]
NASTY_VALUES: list[Any] = [*NASTY_STRINGS, *NASTY_NUMBERS, None, True, [], {}, [1, "a"], {"a": None}]
PATH_VALUES = [
    "pages",
    "groups",
    "1",
    "0",
    "999999",
    "2147483648",
    "99999999999999999999",
    "a",
    "unified-mtl@1",
]


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _schema() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)  # type: ignore[no-any-return]


def _resolve(schema: dict[str, Any], node: Any) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return node if isinstance(node, dict) else {}


def _value(schema: dict[str, Any], node: Any, rng: random.Random, depth: int = 0) -> Any:
    """A plausible value for ``node`` most of the time, a nasty one otherwise."""
    node = _resolve(schema, node)
    if rng.random() < 0.3 or depth > 4:
        return rng.choice(NASTY_VALUES)
    for combinator in ("oneOf", "anyOf", "allOf"):
        if node.get(combinator):
            return _value(schema, rng.choice(node[combinator]), rng, depth + 1)
    if node.get("enum"):
        return rng.choice(node["enum"])
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        props = node.get("properties", {})
        return {
            name: _value(schema, sub, rng, depth + 1)
            for name, sub in props.items()
            if name in node.get("required", []) or rng.random() < 0.6
        }
    if kind == "array":
        return [_value(schema, node.get("items", {}), rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "integer":
        return rng.choice([0, 1, 5, 100, rng.randint(-(2**40), 2**40)])
    if kind == "number":
        return rng.choice([0.0, 0.5, 1.0, rng.uniform(-1e6, 1e6)])
    if kind == "boolean":
        return rng.random() < 0.5
    if node.get("format") == "date":
        return rng.choice(["2026-12-01", "2026-13-01", "1900-01-01"])
    if node.get("format") == "date-time":
        return rng.choice(["2026-12-01T00:00:00Z", "not a time"])
    return rng.choice(["pages", "groups", "content-first@1", "unified-mtl@1", "u1", "x"])


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, item in sorted(schema["paths"].items()):
        for method, operation in sorted(item.items()):
            if method in {"get", "post", "put", "patch", "delete"}:
                out.append((path, method, operation))
    return out


def _json_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    return content.get("application/json", {}).get("schema") if content else None


def _query_params(operation: dict[str, Any]) -> list[str]:
    return [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]


def _fill_path(path: str, rng: random.Random, nasty: str | None = None) -> str:
    from urllib.parse import quote

    def one(_: re.Match[str]) -> str:
        value = nasty if nasty is not None else rng.choice(PATH_VALUES)
        return quote(value.encode("utf-8", "surrogatepass"), safe="")

    return re.sub(r"\{[^}]+\}", one, path)


def _dump(body: Any) -> str:
    # Python's json writes lone surrogates as \\udXXX escapes, which is what an attacker sends.
    return json.dumps(body, ensure_ascii=True, allow_nan=True)


def _requests(schema: dict[str, Any], rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, url, client kwargs) for every explicit example and random case, in a fixed order."""
    from urllib.parse import quote

    cases: list[tuple[str, str, dict[str, Any]]] = []
    pages = ["/", "/stacks/", "/audit/", "/runbooks/", "/experiments/", "/shadow/", "/surfaces/pages/"]
    for page in pages:
        for name in ("q", "surface", "status", "page", "verb", "actor"):
            for nasty in ("\x00", "a%00b", "\ud800"):
                value = quote(nasty.encode("utf-8", "surrogatepass"), safe="%")
                cases.append(("get", f"{page}?{name}={value}", {}))
    for path, method, operation in _operations(schema):
        body_schema = _json_schema(operation)
        params = _query_params(operation) or ["q"]
        # Explicit examples first: the attack's inputs.
        for nasty in ("\x00", "\ud800", "9" * 40):
            cases.append((method, _fill_path(path, rng, nasty), {}))
        for name in params:
            for nasty in ("%00", "a%00b", "%ED%A0%80", "%F0%9F%98%80"):
                cases.append((method, f"{_fill_path(path, rng)}?{name}={nasty}", {}))
        if method in {"post", "put", "patch"}:
            url = _fill_path(path, rng)
            base = _value(schema, body_schema, random.Random(SEED)) if body_schema else {}
            base = base if isinstance(base, dict) else {}
            raw_bodies = [
                _deep(1000),
                _deep(40),
                '{"a": "\\u0000"}',
                '{"a": "\\ud800"}',
                '{"\\u0000": 1}',
                "[1e400]",
                "-" + "9" * 5000,
                '{"a": NaN, "b": Infinity}',
                "\xff\xfe",
                "",
                "null",
                '"\\udc00"',
            ]
            for key in list(base)[:6]:
                for nasty in ("\x00", "\ud800", 1e308, 10**30):
                    raw_bodies.append(_dump({**base, key: nasty}))
                deep = '{"a":' * 1000 + "1" + "}" * 1000
                raw_bodies.append(_dump({**base, key: "DEEP"}).replace('"DEEP"', deep))
            for key in ("rows", "events"):
                if key in base:
                    for nasty in (1e308, 1e15, -1e308, "\x00", {"value": "\ud800"}):
                        row = {"unit_id": "u1", "day": "2026-12-01", "metric": "likes", "value": nasty}
                        raw_bodies.append(_dump({**base, key: [row]}))
            for raw in raw_bodies:
                cases.append((method, url, {"data": raw, "content_type": "application/json"}))
            cases.append((method, url, {"data": {"a": "\x00"}}))  # multipart form field
            cases.append(
                (
                    method,
                    url,
                    {"data": "a=%00&b=%ED%A0%80", "content_type": "application/x-www-form-urlencoded"},
                )
            )
        # Then seeded random cases.
        for _ in range(RANDOM_CASES_PER_OPERATION):
            url = _fill_path(path, rng)
            if rng.random() < 0.5:
                name = rng.choice(params)
                value = _value(schema, {}, rng)
                url += "?" + name + "=" + quote(str(value).encode("utf-8", "surrogatepass"), safe="")
            kwargs: dict[str, Any] = {}
            if method in {"post", "put", "patch"}:
                body = _value(schema, body_schema, rng) if body_schema else {}
                kwargs = {"data": _dump(body), "content_type": "application/json"}
            cases.append((method, url, kwargs))
    return cases


@pytest.fixture
def fuzz_users(make_user: Any, seeded: Any) -> dict[str, Any]:
    return {"anonymous": None, "authenticated": make_user("edge-fuzzer", "viewer", "operator", "approver")}


def test_no_input_gives_a_server_error(fuzz_users: dict[str, Any], settings: Any) -> None:
    # Webhook URLs the fuzzer registers must never be called, whatever it sends.
    settings.WEBHOOK_ALLOWED_HOSTS = []
    schema = _schema()
    counts: dict[str, int] = {}
    server_errors: list[tuple[str, str, str, int, str]] = []
    for role, user in fuzz_users.items():
        client = Client(raise_request_exception=False)
        if user is not None:
            client.force_login(user)
        rng = random.Random(f"{SEED}-{role}")
        cases = _requests(schema, rng)
        for method, url, kwargs in cases:
            response = getattr(client, method)(url, **kwargs)
            counts[role] = counts.get(role, 0) + 1
            if response.status_code >= 500:
                sent = str(kwargs.get("data", ""))[:80]
                server_errors.append((role, method.upper(), url[:120], response.status_code, sent))
    total = sum(counts.values())
    print(f"edge fuzz: {total} requests {counts}, server errors: {len(server_errors)}")
    assert server_errors == [], server_errors[:20]
    assert total >= MIN_REQUESTS, counts
