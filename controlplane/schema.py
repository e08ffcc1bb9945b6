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
