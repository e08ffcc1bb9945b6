"""The API's only request parser: JSON, without the NUL character.

PostgreSQL can store neither ``\\u0000`` in text nor in jsonb ("unsupported Unicode escape
sequence"), so a body carrying one would otherwise fail in the database as a 500. JSON can only
carry NUL as the escape ``\\u0000`` (a raw control character is invalid JSON), so one byte search
of the body decides; only a body containing that text is walked, to tell a real NUL from an
escaped backslash followed by ``u0000``.
"""

from __future__ import annotations

import io
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def _contains_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class JSONWithoutNulParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        body = stream.read() if stream is not None else b""
        data = super().parse(io.BytesIO(body), media_type, parser_context)
        if b"\\u0000" in body and _contains_nul(data):
            raise ParseError("JSON parse error - strings must not contain the NUL character (\\u0000)")
        return data
