"""Serving path: router, shadow scoring and parity, serving logs and metric ingestion batches.

Endpoints (``controlplane/serving/urls.py``)::

    POST /api/v1/surfaces/{surface}/rank            {unit_id, context, num_items?} → items, stack, arm,
                                                    allocation_version, fallback, timings
    GET  /api/v1/surfaces/{surface}/shadow-parity/  per-day parity of the shadow stack(s)
    GET  /api/v1/surfaces/{surface}/serving-health/ requests, fallbacks, errors, p50/p99 per stack and arm
    GET  /api/v1/surfaces/{surface}/counterfactual/?candidate=label   IPS/SNIPS + position bias
    POST /api/v1/ingest/{metric-rows,events,exposures,latency}/       validated, idempotent batches
    GET  /api/v1/ingest/batches/{kind}/{client_batch_id}/

Knobs (Django setting, else environment variable, else default):

====================================  =========================================================
``SERVING_RANK_TIMEOUT_MS``           deadline of the live stack (default 2 × its latency SLO)
``SERVING_TIMEOUT_SLO_MULTIPLE``      that multiple (2.0)
``SERVING_SHADOW_TIMEOUT_MS``         deadline of the shadow stack (default 2 × its SLO)
``SERVING_SHADOW_EXPIRES_S``          a shadow task not started within this is dropped (60)
``SERVING_MAX_CONTEXT_BYTES``         larger request contexts get 413 (4096)
``SERVING_CONFIG_TTL_S``              re-check the cached allocation at most this often (1; pytest 0)
``SERVING_LOG_MODE``                  ``sync`` (write in the request) or ``background`` (sync)
``SERVING_LOG_FLUSH_MS``              background writer interval (200)
``SERVING_IMPRESSION_LOG_SHARE``      share of requests whose ranked list is logged (1.0)
``SERVING_IMPRESSION_LOG_DEPTH``      positions logged per request (50)
``SERVING_EXPLORE_RATE``              RandTop-K exploration probability ε (0.0)
``SERVING_EXPLORE_TOP_K``             K (10)
``SERVING_RANK_THREADS``              threads that run stacks under a deadline (8)
``SERVING_TORCH_THREADS``             torch intra-op threads per process (1)
``SERVING_FAULTS``                    JSON fault injection ``{label: {"error": msg} | {"delay_ms": n}}``
``RANKERS_WORLD``                     simulated world the stacks serve: ``small`` | ``default`` (small)
``RANKERS_WORLD_SEED``                its seed (7)
``RANKERS_ARTIFACTS_DIR``             trained artifacts, loaded or written (``<repo>/artifacts``)
``INGEST_MAX_AGE_DAYS``               oldest accepted metric-row day (400)
``INGEST_EVENT_MAX_AGE_DAYS``         oldest accepted event / sample timestamp (35)
====================================  =========================================================
"""
