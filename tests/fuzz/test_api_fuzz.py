"""Schemathesis against /api/schema/: every operation, anonymous and authenticated.

Checks: no 5xx, and every documented response conforms to its schema and content type. The
counter at the end proves at least 1000 generated requests ran across the two passes.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
MAX_EXAMPLES = 12
REQUESTS: dict[str, int] = {"anonymous": 0, "authenticated": 0}


def _load_schema() -> Any:
    # pytest-django has configured Django before collection; the schema view needs no database.
    from controlplane.wsgi import application

    loaded = schemathesis.openapi.from_wsgi("/api/schema/", application)
    # Explicit examples + property-based fuzzing; the exhaustive coverage phase would multiply the
    # request count (~10k) for little extra signal and blow the CI budget.
    loaded.config.phases.update(phases=["examples", "fuzzing"])
    return loaded


schema = _load_schema()


@pytest.fixture(autouse=True)
def keep_test_connection() -> Any:
    """Requests go through the real WSGI app; like Django's test client, keep the request cycle from
    closing the test transaction's connection (``close_old_connections`` on request start/finish)."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_token(db: Any, make_user: Any, seeded: Any) -> str:
    from knox.models import AuthToken

    user = make_user("fuzzer", "viewer", "operator", "approver")
    return AuthToken.objects.create(user=user)[1]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzz_anonymous(case: Any, db: Any) -> None:
    REQUESTS["anonymous"] += 1
    response = case.call_and_validate(checks=CHECKS)
    if case.method.upper() not in {"GET", "HEAD", "OPTIONS"} and case.path not in PUBLIC_WRITE_PATHS:
        assert response.status_code in (400, 401, 403, 404, 405, 415), (
            case.method,
            case.path,
            response.status_code,
        )


PUBLIC_WRITE_PATHS: set[str] = set()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzz_authenticated(case: Any, fuzz_token: str) -> None:
    REQUESTS["authenticated"] += 1
    case.call_and_validate(headers={"Authorization": f"Token {fuzz_token}"}, checks=CHECKS)


def test_fuzzing_generated_enough_requests() -> None:
    # Runs after the two parametrized passes above (pytest keeps file order).
    total = sum(REQUESTS.values())
    if total == 0:
        pytest.skip("run together with the fuzz tests above")
    print("schemathesis requests:", REQUESTS)
    assert total >= 1000, REQUESTS
