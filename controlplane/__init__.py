"""Stack-unification control plane: the Django project (settings, URLs, Celery app) and its layers.

Layers, lowest first (each imports only the ones below it; ``lint-imports`` enforces it):

- ``controlplane.core``: registry, surfaces, allocations, assignment, audit, errors, permissions;
- ``rankers``: trained stack artifacts (``rankers.engine`` is the pure ranking engine);
- ``controlplane.serving``: router, stack adapters, shadow, parity, and the logs a rank request
  writes (exposures, latency samples, served impressions, ingest batches, bulk writers);
- ``experiments``: metric rows, analysis, readouts (``experiments.stats`` is the pure engine);
- ``migrations_runbooks``: runbooks, gates, ramps, approvals, promotion, capacity;
- ``controlplane.web`` | ``controlplane.demo``: pages, and the demo (seed, traffic simulator,
  ``demo_migration``).

Importing this package must stay cheap and Django-free.
"""
