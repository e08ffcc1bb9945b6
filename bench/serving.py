"""Serving-path benchmark: the rank endpoint under gunicorn, router overhead, ingestion throughput.

    .venv/bin/python bench/serving.py                 # starts a throwaway PostgreSQL (like scripts/test.sh)
    .venv/bin/python bench/serving.py --only ingest --ingest-repeats 3   # only the ingestion part
    DATABASE_URL=postgres://… .venv/bin/python bench/serving.py --duration 30 --rate 50

What it measures (goals from issue 6 in brackets):

1. ``POST /api/v1/surfaces/pages/rank`` served by gunicorn, every unit treated with the unified
   stack, driven by an open-loop load generator in a second process on loopback at ``--rate``
   requests/s. Latency is measured from each request's *scheduled* send time, so a stalled server
   is charged for the requests queued behind it (no coordinated omission). [p99 ≤ 40 ms at 50 rps]
   A closed-loop run with ``--concurrency`` clients then finds the throughput ceiling.
2. Router overhead — everything in ``rank_request`` except the stack: validation, route-cache
   check, assignment, exposure/latency/impression logging — from the ``timings.router_ms`` the
   server reports per request, plus an in-process microbenchmark of the assignment alone.
   [≤ 1 ms p99]
3. Ingestion: metric rows/s through ``ingest_metric_columns`` (validation + COPY into
   PostgreSQL) [≥ 200k rows/s], and engagement events/s through the HTTP batch endpoint
   (``POST /api/v1/ingest/events/``, JSON, validated and rolled up) [≥ 20k events/s]. Each
   metric-row batch also reports the CPU seconds of the PostgreSQL backend and of this process:
   on a shared machine the wall time follows the load (the backend, which does most of the
   work, is one process), the CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir on a free loopback port (durability off, as scripts/test.sh)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        raise SystemExit("PostgreSQL binaries not found; install postgresql or pass DATABASE_URL")
    pgbin = bins[-1]
    rundir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    root = os.getuid() == 0
    user = "postgres" if root else os.environ.get("USER", "postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    if root:
        shutil.chown(rundir, "postgres")
    port = free_port()
    data = rundir / "pg"
    subprocess.run([*prefix, str(pgbin / "initdb"), "-D", str(data), "-A", "trust", "-U", user], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {rundir} -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB"
    )
    subprocess.run([*prefix, str(pgbin / "pg_ctl"), "-D", str(data), "-l", str(rundir / "pg.log"), "-w", "-o",
                    options, "start"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        subprocess.run(
            [str(pgbin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "bench"], check=True
        )
        yield f"postgres://{user}@127.0.0.1:{port}/bench"
    finally:
        subprocess.run([*prefix, str(pgbin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        shutil.rmtree(rundir, ignore_errors=True)


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


# -- load generator (runs as its own process) --------------------------------------------------------
def loadgen(args: argparse.Namespace) -> None:
    """Open-loop (fixed rate) or closed-loop (fixed concurrency) client; writes JSON results."""
    import requests

    url = f"{args.url}/api/v1/surfaces/{args.surface}/rank"
    headers = {"Authorization": f"Token {args.token}", "Content-Type": "application/json"}
    results: list[
        tuple[float, float, int, float, float]
    ] = []  # scheduled→done ms, sent→done ms, status, router, stack
    lock = threading.Lock()
    local = threading.local()
    rng = np.random.default_rng(1)
    units = [f"u{int(u)}" for u in rng.integers(0, args.units, size=200_000)]

    def session() -> requests.Session:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        return local.s

    def one(i: int, scheduled: float) -> None:
        sent = time.perf_counter()
        body = json.dumps({"unit_id": units[i % len(units)], "context": {"client": "bench"}})
        try:
            r = session().post(url, data=body, headers=headers, timeout=10)
            status = r.status_code
            timings = r.json().get("timings", {}) if status == 200 else {}
        except Exception:
            status, timings = 0, {}
        done = time.perf_counter()
        with lock:
            results.append(((done - scheduled) * 1e3, (done - sent) * 1e3, status,
                            float(timings.get("router_ms", "nan")), float(timings.get("stack_ms", "nan"))))  # fmt: skip

    start = time.perf_counter()
    if args.rate > 0:
        from concurrent.futures import ThreadPoolExecutor

        total = int(args.rate * args.duration)
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            for i in range(total):
                scheduled = start + i / args.rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, i, scheduled)
    else:
        stop = start + args.duration
        counter = iter(range(10**9))

        def worker() -> None:
            while time.perf_counter() < stop:
                one(next(counter), time.perf_counter())

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - start
    Path(args.out).write_text(json.dumps({"elapsed": elapsed, "results": results}))


def run_loadgen(url: str, token: str, out: Path, **kw: Any) -> dict[str, Any]:
    cmd = [PY, str(Path(__file__).resolve()), "loadgen", "--url", url, "--token", token, "--out", str(out)]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    data = json.loads(out.read_text())
    rows = np.array(data["results"], dtype=float) if data["results"] else np.zeros((0, 5))
    ok = rows[rows[:, 2] == 200]
    return {
        "requests": len(rows),
        "ok": len(ok),
        "errors": int(len(rows) - len(ok)),
        "throughput": len(ok) / data["elapsed"],
        "p50": pct(ok[:, 0], 50),
        "p99": pct(ok[:, 0], 99),
        "service_p99": pct(ok[:, 1], 99),
        "router_p50": pct(ok[:, 3], 50),
        "router_p99": pct(ok[:, 3], 99),
        "stack_p50": pct(ok[:, 4], 50),
        "stack_p99": pct(ok[:, 4], 99),
    }


# -- the benchmark -----------------------------------------------------------------------------------
def bench(args: argparse.Namespace, database_url: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-var-"))
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": "serving-bench-" + "x" * 40,
        "CONTROLPLANE_VAR_DIR": str(workdir),
        "RANKERS_ARTIFACTS_DIR": os.environ.get("RANKERS_ARTIFACTS_DIR", str(ROOT / "artifacts")),
        "RANKERS_WORLD": args.world,
        "SERVING_LOG_MODE": args.log_mode,
        "SERVING_TORCH_THREADS": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "SECURE_SSL_REDIRECT": "false",
        "CELERY_BROKER_URL": "memory://",
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from controlplane.core import services as registry
    from controlplane.core.models import RankingStack, Surface

    print(
        f"database: {database_url.split('@')[-1]}  world: {args.world}  log mode: {args.log_mode}", flush=True
    )
    call_command("migrate", verbosity=0)
    call_command("seed_demo", "--no-users", verbosity=0)
    pages = Surface.objects.get(key="pages")
    unified = RankingStack.objects.get(key="unified-mtl")
    registry.allocation_change(surface=pages, actor="system:bench", reason="bench: all units on unified",
                               treatment_stack=unified, treatment_bp=10_000)  # fmt: skip
    user, _ = User.objects.get_or_create(username="bench")
    user.groups.set([Group.objects.get_or_create(name=n)[0] for n in ("viewer", "operator")])
    token = Token.objects.get_or_create(user=user)[0].key

    table: list[tuple[str, str, str, str]] = []
    rank = args.only in ("all", "rank")
    n_users = n_users_ready() if rank else 0
    if rank:
        bench_router(args, pages, n_users, table)
    url, stop = start_gunicorn(args, env, workdir, token)
    try:
        if rank:
            bench_rank_endpoint(args, url, token, workdir, n_users, table)
        if args.only in ("all", "ingest"):
            bench_ingest(args, url, token, pages, unified, table)
    finally:
        stop()
        shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.1f} (shared); gunicorn {args.workers} workers × "
          f"{args.threads} threads; log mode {args.log_mode}\n")  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    header = ("measure", "latency / time", "throughput", "goal")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def n_users_ready() -> int:
    from controlplane.serving.stacks import stack_registry

    t = time.perf_counter()
    n_users = stack_registry().world.store.n_users  # trains once, or loads the saved bundle
    print(f"stacks ready in {time.perf_counter() - t:.1f} s ({n_users} users)", flush=True)
    return int(n_users)


def bench_router(
    args: argparse.Namespace, pages: Any, n_users: int, table: list[tuple[str, str, str, str]]
) -> None:
    """1. Assignment and router overhead in process."""
    from controlplane.core.selectors import allocation_config, allocation_current

    # 1. Assignment alone (pure, in process).
    config = allocation_config(allocation_current(surface=pages))
    ids = [f"u{i}" for i in range(100_000)]
    t = time.perf_counter()
    for unit in ids:
        config.assign(unit)
    per_assign_us = (time.perf_counter() - t) / len(ids) * 1e6
    table.append(("assignment (pure, in process)", f"{per_assign_us:.2f} µs/unit", "", "part of ≤ 1 ms"))

    # 1b. Router overhead in process, one request at a time (no HTTP, no thread contention).
    from django.test.utils import override_settings

    from controlplane.serving.services import rank_request

    for i in range(100):
        rank_request(surface_key="pages", unit_id=f"u{i}")
    router = [rank_request(surface_key="pages", unit_id=f"u{i % n_users}")["timings"]["router_ms"]
              for i in range(args.router_requests)]  # fmt: skip
    table.append((f"router overhead (assign + log), in process, {args.router_requests} requests",
                  f"p50 {pct(router, 50):.3f} ms, p99 {pct(router, 99):.3f} ms", "", "p99 ≤ 1 ms"))  # fmt: skip
    # The same with the allocation re-checked on every request (one PostgreSQL round trip).
    with override_settings(SERVING_CONFIG_TTL_S=0.0):
        router = [rank_request(surface_key="pages", unit_id=f"u{i % n_users}")["timings"]["router_ms"]
                  for i in range(args.router_requests)]  # fmt: skip
    table.append(("  same, allocation re-checked every request (SERVING_CONFIG_TTL_S=0)",
                  f"p50 {pct(router, 50):.3f} ms, p99 {pct(router, 99):.3f} ms", "", ""))  # fmt: skip


def start_gunicorn(
    args: argparse.Namespace,
    env: dict[str, str],
    workdir: Path,
    token: str,
    *,
    workers: int | None = None,
    threads: int | None = None,
    name: str = "gunicorn",
) -> tuple[str, Callable[[], None]]:
    """gunicorn on a free loopback port (``args.workers`` × ``args.threads`` unless given); (url, stop).
    Its log is ``workdir/<name>.log``."""
    import requests

    port = free_port()
    log = (workdir / f"{name}.log").open("w")
    gunicorn = subprocess.Popen(
        [str(Path(PY).parent / "gunicorn"), "controlplane.wsgi:application", "-b", f"127.0.0.1:{port}",
         "-w", str(workers or args.workers), "--threads", str(threads or args.threads), "--log-level", "warning",
         "--timeout", "120"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        gunicorn.terminate()
        try:
            gunicorn.wait(20)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
        log.close()

    deadline = time.monotonic() + 180
    while True:
        try:
            r = requests.get(f"{url}/api/v1/surfaces/pages/", headers={"Authorization": f"Token {token}"},
                             timeout=60)  # fmt: skip
            if r.status_code == 200:
                return url, stop
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or gunicorn.poll() is not None:
            stop()
            raise SystemExit(f"{name} did not come up:\n" + (workdir / f"{name}.log").read_text()[-3000:])
        time.sleep(0.5)


def bench_rank_endpoint(
    args: argparse.Namespace,
    url: str,
    token: str,
    workdir: Path,
    n_users: int,
    table: list[tuple[str, str, str, str]],
) -> None:
    """2. The rank endpoint under gunicorn."""
    # Warm every worker (each loads the stack bundle on its first request).
    run_loadgen(url, token, workdir / "warm.json", rate=0, duration=5, concurrency=args.workers * 2,
                units=n_users)  # fmt: skip
    fixed = run_loadgen(url, token, workdir / "fixed.json", rate=args.rate, duration=args.duration,
                        concurrency=32, units=n_users)  # fmt: skip
    table.append((f"rank endpoint, unified stack, {args.rate:g} rps open loop",
                  f"p50 {fixed['p50']:.1f} ms, p99 {fixed['p99']:.1f} ms",
                  f"{fixed['throughput']:.1f} rps, {fixed['errors']} errors / {fixed['requests']}",
                  "p99 ≤ 40 ms"))  # fmt: skip
    table.append(("  of which inside the stack", f"p50 {fixed['stack_p50']:.1f} ms, p99 {fixed['stack_p99']:.1f} ms",
                  "", ""))  # fmt: skip
    table.append(("router overhead (assign + log), server-side",
                  f"p50 {fixed['router_p50']:.3f} ms, p99 {fixed['router_p99']:.3f} ms", "", "p99 ≤ 1 ms"))  # fmt: skip
    closed = run_loadgen(url, token, workdir / "closed.json", rate=0, duration=max(5, args.duration // 2),
                         concurrency=args.concurrency, units=n_users)  # fmt: skip
    table.append((f"rank endpoint, closed loop, {args.concurrency} clients",
                  f"p50 {closed['p50']:.1f} ms, p99 {closed['p99']:.1f} ms",
                  f"{closed['throughput']:.1f} rps (ceiling)", ""))  # fmt: skip


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of (this connection's PostgreSQL backend, this process); the backend's
    from /proc when the server is local, else nan."""
    import resource

    from django.db import connection

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        server = float("nan")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return server, usage.ru_utime + usage.ru_stime


def bench_ingest(
    args: argparse.Namespace,
    url: str,
    token: str,
    pages: Any,
    unified: Any,
    table: list[tuple[str, str, str, str]],
) -> None:
    """3. Metric rows through the ingestion service in process; 4. events through the HTTP endpoint."""
    import datetime as dt

    import requests
    from django.db import connection, transaction
    from django.utils import timezone

    from controlplane.core.selectors import allocation_current
    from controlplane.serving.bulk import insert_rows
    from controlplane.serving.models import Exposure
    from experiments.ingestion import ingest_metric_columns, metric_definitions_ensure

    metric_definitions_ensure()
    salt = allocation_current(surface=pages).salt
    now = timezone.now()
    exposed = set(Exposure.objects.filter(surface=pages).values_list("unit_id", flat=True))
    insert_rows(Exposure._meta.db_table,
                ["surface_id", "salt", "unit_id", "arm", "population", "stack", "allocation_version",
                 "first_exposed_at"],
                [(pages.pk, salt, f"u{i}", "treatment", "content_first", unified.label, 2, now)
                 for i in range(args.units) if f"u{i}" not in exposed])  # fmt: skip
    metrics = [
        "impressions", "sessions", "time_spent", "likes", "comments", "shares", "hides", "reports",
        "integrity_impressions", "errors", "requests", "meaningful_interactions", "newcomer_impressions",
    ]  # fmt: skip
    n = args.rows
    rng = np.random.default_rng(3)
    for rep in range(args.ingest_repeats):
        # Each repeat sends new rows (other days), as a warehouse would.
        unit_col = np.array([f"u{i}" for i in range(args.units)], dtype=object)[np.arange(n) % args.units]
        day_col = np.array([(now.date() - dt.timedelta(days=1 + 14 * rep + (i % 14))).isoformat()
                            for i in range(14)], dtype=object)[(np.arange(n) // args.units) % 14]  # fmt: skip
        metric_col = np.array(metrics, dtype=object)[np.arange(n) % len(metrics)]
        value_col = rng.poisson(3.0, size=n).astype(float)

        cpu = _cpu_seconds()
        t = time.perf_counter()
        with transaction.atomic():
            result = ingest_metric_columns(surface=pages, client_batch_id=f"bench-{time.time_ns()}",
                                           unit_ids=unit_col, days=day_col, metrics=metric_col, values=value_col,
                                           actor="system:bench")  # fmt: skip
            copied = time.perf_counter()
            # Any deferred constraint checks run at commit; forcing them here times that part alone.
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            checked = time.perf_counter()
        seconds = time.perf_counter() - t
        assert result.written == n, result.to_dict()
        table.append((f"ingest metric rows (validate + COPY + commit), {n:,} rows, run {rep + 1}",
                      f"{seconds:.2f} s", f"{n / seconds:,.0f} rows/s", "≥ 200k rows/s"))  # fmt: skip
        table.append(("  validation + COPY", f"{copied - t:.2f} s", f"{n / (copied - t):,.0f} rows/s", ""))
        table.append(("  deferred constraint checks", f"{checked - copied:.2f} s", "", ""))
        server, client = (b - a for a, b in zip(cpu, _cpu_seconds(), strict=True))
        # On a shared machine wall time depends on the load; CPU time much less so.
        table.append(("  CPU time: PostgreSQL backend + this process (incl. COPY writer thread)",
                      f"{server:.2f} s + {client:.2f} s", f"{n / (server + client):,.0f} rows/CPU-s", ""))  # fmt: skip

    # 4. Ingestion: engagement events through the HTTP batch endpoint (gunicorn).
    types = ["impression", "like", "comment", "share", "hide", "dwell", "session", "request"]
    session = requests.Session()
    total_events, total_seconds = 0, 0.0
    for b in range(args.event_batches):
        ts = (now - dt.timedelta(minutes=5)).isoformat()
        events = [{"unit_id": f"u{(b * args.batch_size + i) % args.units}", "ts": ts, "type": types[i % len(types)],
                   **({"value": 7.5} if types[i % len(types)] == "dwell" else {})}
                  for i in range(args.batch_size)]  # fmt: skip
        body = json.dumps(
            {"client_batch_id": f"bench-ev-{time.time_ns()}", "surface": "pages", "events": events}
        )
        t = time.perf_counter()
        r = session.post(f"{url}/api/v1/ingest/events/", data=body, timeout=300,
                         headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})  # fmt: skip
        total_seconds += time.perf_counter() - t
        assert r.status_code == 201 and r.json()["accepted"] == args.batch_size, r.text[:500]
        total_events += args.batch_size
    table.append((f"ingest events via HTTP, {args.event_batches} × {args.batch_size:,}",
                  f"{total_seconds / args.event_batches:.2f} s/batch",
                  f"{total_events / total_seconds:,.0f} events/s", "≥ 20k events/s"))  # fmt: skip


def loadgen_parser(doc: str | None, *, duration: float, concurrency: int) -> tuple[Any, Any]:
    """(parser, loadgen sub-parser): the load generator runs as a second process of the bench."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    lg = parser.add_subparsers(dest="command").add_parser("loadgen")
    lg.add_argument("--url", required=True)
    lg.add_argument("--token", required=True)
    lg.add_argument("--out", required=True)
    lg.add_argument("--rate", type=float, default=50)
    lg.add_argument("--duration", type=float, default=duration)
    lg.add_argument("--concurrency", type=int, default=concurrency)
    lg.add_argument("--units", type=int, default=1500)
    return parser, lg


def main() -> None:
    parser, lg = loadgen_parser(__doc__, duration=20, concurrency=16)
    lg.add_argument("--surface", default="pages")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--world", default="small", choices=["small", "default"])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--log-mode", default="background", choices=["background", "sync"])
    parser.add_argument("--units", type=int, default=50_000, help="known units for ingestion")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--event-batches", type=int, default=5)
    parser.add_argument("--router-requests", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument(
        "--only",
        default="all",
        choices=["all", "rank", "ingest"],
        help="run only the rank/router part or only the ingestion part",
    )
    parser.add_argument("--ingest-repeats", type=int, default=1, help="metric-row batches to time")
    args = parser.parse_args()
    if args.command == "loadgen":
        loadgen(args)
        return
    if args.database_url:
        bench(args, args.database_url)
    else:
        with throwaway_postgres() as url:
            bench(args, url)


if __name__ == "__main__":
    main()
