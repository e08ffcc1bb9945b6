"""The permission matrix, generated from the OpenAPI schema: every mutating operation × anonymous,
viewer, serving, operator, approver (issue 17).

Each cell sends the operation an empty JSON object as that caller: "deny" is 401/403, "allow" is
anything else (the request reached the view: validation, 404, conflict or success). Invariants:
anonymous and viewers change nothing; a serving fleet reaches exactly the rank and ingestion
endpoints. ``PERMISSION_MATRIX_OUT=docs/permission-matrix.md`` writes the table.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

ROLES = ("anonymous", "viewer", "serving", "operator", "approver")
SERVING_OPERATIONS = {
    "surfaces_rank",
    "ingest_metric_rows",
    "ingest_events",
    "ingest_exposures",
    "ingest_latency",
}
PATH_VALUES = {
    "surface_key": "pages",
    "key": "exp-1",
    "kind": "metric_rows",
    "fmt": "json",
    "action": "pause",
}


def _operations() -> list[tuple[str, str, str]]:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    out = []
    for path, item in sorted(schema["paths"].items()):
        for method, operation in sorted(item.items()):
            if method in {"post", "put", "patch", "delete"}:
                out.append((operation["operationId"], method, path))
    return out


def _url(path: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: PATH_VALUES.get(m.group(1), "1"), path)


@pytest.mark.django_db
def test_permission_matrix_from_the_schema(seeded, make_user, api_client_for):
    users: dict[str, Any] = {
        "anonymous": None,
        "viewer": make_user("m-viewer", "viewer"),
        "serving": make_user("m-serving", "serving"),
        "operator": make_user("m-operator", "operator"),
        "approver": make_user("m-approver", "approver"),
    }
    clients = {role: api_client_for(user) for role, user in users.items()}
    rows: list[tuple[str, str, str, dict[str, str]]] = []
    for op_id, method, path in _operations():
        cells = {}
        for role in ROLES:
            response = getattr(clients[role], method)(_url(path), {}, format="json")
            cells[role] = "deny" if response.status_code in (401, 403) else f"allow ({response.status_code})"
        rows.append((op_id, method.upper(), path, cells))
    lines = [
        "# Permission matrix (generated from the OpenAPI schema)",
        "",
        "`PERMISSION_MATRIX_OUT=docs/permission-matrix.md bash scripts/test.sh tests/security/test_permission_matrix.py`",
        "",
        "Every mutating operation, called with an empty JSON body: **deny** = 401/403; **allow** = the",
        "request reached the view (the status it got with an empty body is in brackets).",
        "",
        "| operation | method | path | " + " | ".join(ROLES) + " |",
        "|---|---|---|" + "---|" * len(ROLES),
    ]
    for op_id, method, path, cells in rows:
        lines.append(f"| {op_id} | {method} | `{path}` | " + " | ".join(cells[r] for r in ROLES) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.environ.get("PERMISSION_MATRIX_OUT")
    if out:
        Path(out).write_text(text)
    assert len(rows) >= 20
    for op_id, _, path, cells in rows:
        assert cells["anonymous"] == "deny", (op_id, path)
        assert cells["viewer"] == "deny", (op_id, path)
        assert (cells["serving"] != "deny") == (op_id in SERVING_OPERATIONS), (op_id, path, cells["serving"])
    assert {op for op, *_ in rows} >= SERVING_OPERATIONS
