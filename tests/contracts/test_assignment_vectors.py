"""The golden assignment vectors: pinned bytes, reproduced by the library and by an independent port."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from controlplane.core.assignment import AllocationConfig, bucket

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
VECTORS = CONTRACTS / "assignment-vectors.v1.json"
# Changing the hash reassigns every unit of every running experiment. If this fails, the vectors
# changed: that is a new assignment version, never an edit of this one.
VECTORS_SHA256 = "575c1663165f86c499ed75cd8456e946f78f4c95c8d100f451afc10bfedc0e2e"


def load() -> dict[str, Any]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


def test_the_vector_file_is_pinned():
    assert hashlib.sha256(VECTORS.read_bytes()).hexdigest() == VECTORS_SHA256


def test_the_generator_reproduces_the_file():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", CONTRACTS / "generate_assignment_vectors.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == VECTORS.read_text(encoding="utf-8")


def test_library_reproduces_every_vector():
    data = load()
    assert len(data["buckets"]) >= 100 and len(data["assignments"]) >= 40
    for v in data["buckets"]:
        assert bucket(v["salt"], v["unit_id"]) == v["bucket"], v
    configs = {c["surface"]: AllocationConfig.from_dict(c) for c in data["configs"]["surfaces"]}
    for v in data["assignments"]:
        config = configs[v["surface"]]
        a = config.assign(v["unit_id"])
        assert (a.bucket, a.arm, a.stack, a.population) == (
            v["bucket"],
            v["arm"],
            v["stack"],
            v["population"],
        ), v
        assert bucket(config.population_salt, v["unit_id"]) == v["population_bucket"]
    arms = {v["arm"] for v in data["assignments"]}
    assert arms == {"holdout", "control", "treatment"}, "the vectors must exercise every arm"


# -- an independent port, written from the file's description only --------------------------------
MASK = (1 << 64) - 1


def _port_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _port_key(value: str | int) -> int:
    if isinstance(value, int):
        return value
    if re.fullmatch(r"[0-9]{1,19}", value):
        return int(value)
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def test_an_independent_port_from_the_description_agrees():
    data = load()
    for v in data["buckets"]:
        salt_key = int.from_bytes(hashlib.blake2b(v["salt"].encode(), digest_size=8).digest(), "little")
        assert _port_mix(_port_mix(_port_key(v["unit_id"])) ^ salt_key) % 10000 == v["bucket"], v
    for v in data["assignments"]:
        config = next(c for c in data["configs"]["surfaces"] if c["surface"] == v["surface"])
        b = v["bucket"]
        holdout, treated = config["holdout_bp"], config["treatment"]["bp"]
        arm = "holdout" if b < holdout else "treatment" if b < holdout + treated else "control"
        cumulative, population = 0, None
        for p in config["populations"]:
            cumulative += p["bp"]
            if v["population_bucket"] < cumulative:
                population = p
                break
        assert population is not None
        stack = config["treatment"]["stack"] if arm == "treatment" else population["stack"]
        assert (arm, population["population"], stack) == (v["arm"], v["population"], v["stack"]), v


def test_vector_configs_follow_the_json_schema():
    schema = json.loads((CONTRACTS / "allocation-config.v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(load()["configs"])


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("schema",), 2),
        (("surfaces", 0, "holdout_bp"), 10001),
        (("surfaces", 0, "buckets"), 1000),
        (("surfaces", 0, "populations"), []),
        (("surfaces", 0, "treatment", "bp"), -1),
        (("surfaces", 0, "salt"), ""),
        (("surfaces", 0, "surprise"), 1),
    ],
)
def test_the_schema_rejects_malformed_documents(path, value):
    schema = json.loads((CONTRACTS / "allocation-config.v1.schema.json").read_text())
    document = load()["configs"]
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(document)
