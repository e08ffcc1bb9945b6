"""Ops tests reuse the runbook tests' scripted analysis and parity (the gates' inputs)."""

from __future__ import annotations

from tests.runbooks.conftest import scripted_analysis, scripted_parity

__all__ = ["scripted_analysis", "scripted_parity"]
