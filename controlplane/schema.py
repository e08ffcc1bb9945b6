"""OpenAPI naming: nested `InputSerializer`/`OutputSerializer` classes (the style guide's pattern)
are named after their view, so every component name in the schema is unique."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.openapi import AutoSchema


class ControlPlaneAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer: Any, direction: Literal["request", "response"]) -> str:
        cls = serializer.__class__
        qualname = cls.__qualname__
        if "." in qualname:  # nested: AllocationApi.InputSerializer → AllocationApiInput
            name = "".join(part.removesuffix("Serializer") for part in qualname.split("."))
            return name
        return super().get_serializer_name(serializer, direction)


# --- Post-processing: error responses and examples on every operation ------------------------------
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every API error: a sentence, a machine code, and the fields at fault (controlplane/errors.py).",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
    "required": ["detail", "code", "errors"],
}
ERRORS: dict[str, tuple[str, dict[str, Any]]] = {
    "400": (
        "Invalid input; `errors` names each field at fault.",
        {
            "detail": "reason: This field is required.",
            "code": "invalid",
            "errors": {"reason": ["This field is required."]},
        },
    ),
    "401": (
        "No valid credentials (send `Authorization: Token <key>` or a session cookie).",
        {
            "detail": "Authentication credentials were not provided.",
            "code": "not_authenticated",
            "errors": {},
        },
    ),
    "403": (
        "Authenticated, but the role this operation needs (viewer, operator, approver) is missing.",
        {"detail": "You need the operator role to change this.", "code": "permission_denied", "errors": {}},
    ),
    "404": (
        "No such object (or not visible to you).",
        {"detail": "No Runbook matches the given query.", "code": "not_found", "errors": {}},
    ),
    "409": (
        "The change conflicts with the current state (wrong status, a concurrent edit, a replayed id with other content).",
        {"detail": "runbook 7 is running; only a draft can start", "code": "conflict", "errors": {}},
    ),
    "413": (
        "The request is larger than this operation accepts (body, rows per batch, or request context).",
        {"detail": "a batch holds at most 1000000 rows (got 1200000)", "code": "too_large", "errors": {}},
    ),
    "429": (
        "Rate limited; retry after the number of seconds in the `Retry-After` header.",
        {
            "detail": "Request was throttled. Expected available in 42 seconds.",
            "code": "throttled",
            "errors": {},
        },
    ),
}
_EXAMPLE_STRINGS = {
    "date-time": "2026-03-02T09:00:00Z",
    "date": "2026-03-02",
    "uri": "https://hooks.example.com/controlplane",
    "email": "pm@example.com",
    "uuid": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
}


# Plausible values by property name, so generated examples read like real calls.
_NAMED = {
    "surface": "pages",
    "surface_key": "pages",
    "target_stack": "unified-mtl@1",
    "treatment_stack": "unified-mtl@1",
    "shadow_stack": "unified-mtl@1",
    "stack": "content-first@1",
    "key": "pages-unified-1",
    "salt": "pages-exp-1",
    "population": "content_first",
    "unit_id": "u123",
    "request_id": "req-0001",
    "client_batch_id": "warehouse-2026-03-02",
    "metric": "time_spent",
    "reason": "shadow parity reviewed; start the ramp",
    "name": "pages: move to the unified MTL stack",
    "version": "1",
}
# Whole examples for the operations a serving fleet or a runbook client calls first.
_OPERATION_EXAMPLES: dict[str, dict[str, Any]] = {
    "config_allocations": {
        "200": {
            "schema": 1,
            "versions": {"pages": 3},
            "surfaces": [
                {
                    "surface": "pages",
                    "version": 3,
                    "buckets": 10000,
                    "salt": "pages-exp-1",
                    "population_salt": "population:pages",
                    "holdout_bp": 0,
                    "treatment": {"stack": "unified-mtl@1", "bp": 500},
                    "shadow": {"stack": None, "bp": 0},
                    "populations": [{"population": "content_first", "stack": "content-first@1", "bp": 10000}],
                }
            ],
        }
    },
}


def example_for(schema: dict[str, Any], components: dict[str, Any], depth: int = 0, name: str = "") -> Any:
    """A value that fits ``schema`` (first enum value, formats, one item per array), for the docs."""
    if depth > 8:
        return None
    if "$ref" in schema:
        target = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
        return example_for(target, components, depth + 1, name)
    if "example" in schema:
        return schema["example"]
    for combinator in ("allOf", "oneOf", "anyOf"):
        if schema.get(combinator):
            options = [s for s in schema[combinator] if s.get("enum") != [None]] or schema[combinator]
            if combinator == "allOf":
                merged: dict[str, Any] = {}
                for part in options:
                    value = example_for(part, components, depth + 1)
                    if isinstance(value, dict):
                        merged.update(value)
                    else:
                        return value
                return merged
            return example_for(options[0], components, depth + 1, name)
    if schema.get("enum"):
        return next((v for v in schema["enum"] if v is not None), None)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {key: example_for(sub, components, depth + 1, key) for key, sub in props.items()}
    if kind == "array":
        return [example_for(schema.get("items", {}), components, depth + 1, name)]
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "number":
        return float(schema.get("minimum", 0.5) or 0.5)
    if kind == "boolean":
        return True
    if kind == "string":
        if schema.get("format") in _EXAMPLE_STRINGS:
            return _EXAMPLE_STRINGS[schema["format"]]
        return _NAMED.get(name, "string")
    return None


def postprocess_errors_and_examples(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular hook: the shared error body on every operation, and an example everywhere."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = ERROR_SCHEMA
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code, example in _OPERATION_EXAMPLES.get(operation.get("operationId", ""), {}).items():
                for media in responses.get(code, {}).get("content", {}).values():
                    media["example"] = example
            for code, (description, example) in ERRORS.items():
                response = responses.setdefault(code, {"description": description})
                content = response.setdefault("content", {})
                content.setdefault("application/json", {"schema": error_ref, "example": example})
            for response in responses.values():
                for media in response.get("content", {}).values():
                    if "example" not in media and "examples" not in media and "schema" in media:
                        media["example"] = example_for(media["schema"], components)
            body = operation.get("requestBody", {})
            for media in body.get("content", {}).values():
                if "example" not in media and "examples" not in media and "schema" in media:
                    media["example"] = example_for(media["schema"], components)
    return result
