"""The OpenFeature provider: parity with AllocationConfig through the real SDK, ETag refresh against
the live API, errors, and the JSON Schema of the document it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from controlplane.core.assignment import ARM_NAMES, AllocationConfig
from controlplane.core.openfeature_provider import AllocationConfigProvider, FetchResult, parse_document

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def document() -> dict[str, Any]:
    return json.loads((CONTRACTS / "assignment-vectors.v1.json").read_text())["configs"]


@pytest.fixture
def flags() -> Any:
    provider = AllocationConfigProvider(document=document())
    api.set_provider_and_wait(provider, domain="contracts-test")
    yield api.get_client(domain="contracts-test")
    api.clear_providers()


def test_parity_with_allocation_config_on_100k_units(flags):
    configs = parse_document(document())
    groups = configs["groups"]  # two legacy populations, half treated
    pages = configs["pages"]  # one population, holdout and treatment
    units = np.arange(100_000, dtype=np.int64) * 7919 + 13
    arms_g, pops_g = groups.assign_many(units)
    arms_p, _ = pages.assign_many(units)
    seen = set()
    for i, unit in enumerate(units.tolist()):
        details = flags.get_string_details("groups", "fallback", EvaluationContext(targeting_key=str(unit)))
        expected = groups.assign(unit)
        assert details.value == expected.stack and details.variant == expected.arm, unit
        assert details.variant == ARM_NAMES[arms_g[i]]
        assert details.flag_metadata["population"] == groups.populations[pops_g[i]].population
        assert details.flag_metadata["bucket"] == expected.bucket
        assert details.reason == Reason.SPLIT
        seen.add((details.variant, details.flag_metadata["population"]))
        if i % 10 == 0:  # text ids on the other surface (a tenth: the SDK is the slow part)
            text = f"user-{unit}"
            treated = flags.get_boolean_value("pages", False, EvaluationContext(targeting_key=text))
            assert treated == pages.assign(text).treated
            assert ARM_NAMES[arms_p[i]] == pages.assign(unit).arm
    assert seen == {
        (arm, pop) for arm in ("control", "treatment") for pop in ("content_first", "interest_first")
    }


def test_population_in_the_context_and_errors(flags):
    base = flags.get_object_details("groups", {}, EvaluationContext(targeting_key="u1"))
    assert set(base.value) == {"stack", "arm", "population", "bucket"}
    other = "interest_first" if base.value["population"] == "content_first" else "content_first"
    told = flags.get_string_details(
        "groups", "fallback", EvaluationContext(targeting_key="u1", attributes={"population": other})
    )
    assert told.flag_metadata["population"] == other and told.flag_metadata["bucket"] == base.value["bucket"]
    if base.value["arm"] != "treatment":
        assert told.value == {"content_first": "content-first@1", "interest_first": "interest-first@1"}[other]

    def error(flag: str, context: EvaluationContext) -> Any:
        details = flags.get_string_details(flag, "fallback", context)
        assert details.value == "fallback" and details.reason == Reason.ERROR
        return details.error_code

    assert error("nowhere", EvaluationContext(targeting_key="u1")) == ErrorCode.FLAG_NOT_FOUND
    assert error("groups", EvaluationContext()) == ErrorCode.TARGETING_KEY_MISSING
    assert error("groups", EvaluationContext(targeting_key=" padded ")) == ErrorCode.INVALID_CONTEXT
    assert (
        error("groups", EvaluationContext(targeting_key="u1", attributes={"population": "martians"}))
        == ErrorCode.INVALID_CONTEXT
    )
    number = flags.get_integer_details("groups", 7, EvaluationContext(targeting_key="u1"))
    assert number.value == 7 and number.error_code == ErrorCode.TYPE_MISMATCH


def test_refresh_keeps_the_last_good_document_and_reports_not_ready():
    now = [0.0]
    replies: list[Any] = [RuntimeError("never used")]

    def fetch(etag: str | None) -> FetchResult:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    provider = AllocationConfigProvider(fetcher=fetch, refresh_interval_s=30, clock=lambda: now[0])
    replies[:] = [OSError("connection refused")]
    down = provider.resolve_string_details("groups", "fallback", EvaluationContext(targeting_key="u1"))
    assert down.error_code == ErrorCode.PROVIDER_NOT_READY and "connection refused" in down.error_message
    now[0] += 30
    replies[:] = [FetchResult(200, document(), '"v1"')]
    up = provider.resolve_string_details("groups", "fallback", EvaluationContext(targeting_key="u1"))
    assert up.error_code is None and provider.etag == '"v1"'
    now[0] += 10  # within the interval: no poll at all
    provider.resolve_string_details("groups", "fallback", EvaluationContext(targeting_key="u1"))
    assert provider.fetches == 1
    now[0] += 30
    replies[:] = [FetchResult(200, {"schema": 99, "surfaces": []}, '"v2"')]
    kept = provider.resolve_string_details("groups", "fallback", EvaluationContext(targeting_key="u1"))
    assert kept.value == up.value and provider.etag == '"v1"' and "schema 99" in provider.last_refresh_error


def test_provider_refreshes_with_if_none_match_against_the_live_api(
    live_server, transactional_db, seeded, users
):
    from knox.models import AuthToken

    from controlplane.core.services import allocation_change

    token = AuthToken.objects.create(user=users["viewer"])[1]
    url = f"{live_server.url}/api/v1/config/allocations/"
    now = [0.0]
    provider = AllocationConfigProvider(url=url, token=token, refresh_interval_s=60, clock=lambda: now[0])
    api.set_provider_and_wait(provider, domain="live")
    flags = api.get_client(domain="live")
    try:
        unit = EvaluationContext(targeting_key="u-live-1")
        before = flags.get_string_details("pages", "fallback", unit)
        assert before.value == "content-first@1", (before, provider.last_refresh_error)
        assert before.variant == "control"
        assert provider.fetches == 1 and provider.etag
        version = provider.versions["pages"]

        now[0] += 60
        flags.get_string_details("pages", "fallback", unit)
        assert (provider.fetches, provider.not_modified) == (2, 1)  # 304: the ETag matched

        allocation_change(
            surface=seeded["pages"],
            actor="system:test",
            reason="ramp to 100%",
            treatment_stack=seeded["unified"],
            treatment_bp=10_000,
            salt="pages-of-1",
        )
        now[0] += 60
        after = flags.get_string_details("pages", "fallback", unit)
        assert after.value == "unified-mtl@1" and after.variant == "treatment"
        assert provider.versions["pages"] == version + 1 and provider.not_modified == 1

        # The document the live API serves follows the versioned JSON Schema.
        schema = json.loads((CONTRACTS / "allocation-config.v1.schema.json").read_text())
        import urllib.request

        request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            jsonschema.Draft202012Validator(schema).validate(json.loads(response.read()))
        config = AllocationConfig.from_dict(
            next(
                s
                for s in json.loads(urllib.request.urlopen(request).read())["surfaces"]
                if s["surface"] == "pages"
            )
        )
        assert config.assign("u-live-1").stack == after.value
    finally:
        api.clear_providers()


def test_the_provider_imports_without_django():
    code = "import sys, controlplane.core.openfeature_provider; assert 'django' not in sys.modules, 'django loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
