"""plotly.js served from the installed plotly wheel (no CDN, no npm).

The file lives at ``plotly/package_data/plotly.min.js``; its URL carries plotly's version, so the
response can be cached as immutable, and a gzip copy is made once per process (4.8 MB → ~1.4 MB).
"""

from __future__ import annotations

import gzip
import hashlib
from functools import cache
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.views.decorators.http import require_safe


@cache
def plotly_version() -> str:
    return version("plotly")


@cache
def _plotly_js() -> tuple[bytes, bytes, str]:
    spec = find_spec("plotly")
    if spec is None or spec.origin is None:
        raise Http404("plotly is not installed")
    raw = (Path(spec.origin).parent / "package_data" / "plotly.min.js").read_bytes()
    return raw, gzip.compress(raw, compresslevel=6, mtime=0), '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


@require_safe
def plotly_js(request: HttpRequest, plotly_ver: str) -> HttpResponse:
    if plotly_ver != plotly_version():
        raise Http404("unknown plotly version")
    raw, gz, etag = _plotly_js()
    if request.headers.get("If-None-Match") == etag:
        return HttpResponseNotModified()
    use_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    response = HttpResponse(gz if use_gzip else raw, content_type="text/javascript; charset=utf-8")
    if use_gzip:
        response["Content-Encoding"] = "gzip"
    response["Vary"] = "Accept-Encoding"
    response["ETag"] = etag
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
