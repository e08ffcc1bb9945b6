"""Operations: Prometheus metrics, health and readiness, structured logs and request ids.

Top layer (beside ``controlplane.web``): it reads every app; no other app imports it. Code in
lower layers counts its own work through ``controlplane.core.telemetry``.
"""
