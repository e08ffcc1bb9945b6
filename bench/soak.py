"""Soak: the serving path and ingestion under steady load; latency drift, errors and memory over time.

    .venv/bin/python bench/soak.py                    # 10 minutes; throwaway PostgreSQL + Redis + worker
    .venv/bin/python bench/soak.py --duration 120     # 2 minutes, while developing
    DATABASE_URL=postgres://… .venv/bin/python bench/soak.py --redis-url redis://…

What runs (issue 10, part 6), set up with bench/serving.py's helpers:

* gunicorn serving ``controlplane.wsgi`` on loopback; *pages* at 50 % on the unified stack, and
  10 % of the requests served by a legacy stack re-ranked by the unified stack in a Celery task
  (``shadow_score_task``) — so Redis and a real ``celery worker`` are in the loop;
* ingestion served by a second gunicorn pool of its own (``--ingest-workers``, 1 worker × 2
  threads; 0 sends it to the rank pool instead), as production should route ``/api/v1/ingest/``
  (README, "Serving and ingestion pools"): a batch holds the GIL for most of its ~100 ms of
  parsing, validation and COPY, and in a rank worker the rank threads wait behind it;
* a load generator in a second process: open-loop ``POST /api/v1/surfaces/pages/rank`` at
  ``--rate`` requests/s (latency from each request's *scheduled* send time, as bench/serving.py,
  so a stall is charged to every request queued behind it), and an ingestion client: a batch of
  engagement events every ``--events-every`` s (``POST /api/v1/ingest/events/``) and a batch of
  warehouse metric rows every ``--rows-every`` s (``POST /api/v1/ingest/metric-rows/``), each under
  a fresh ``client_batch_id``;
* every ``--sample`` s one table row for that interval: rank p50/p99 and throughput, errors,
  ingestion rates and p99, shadow comparisons written and the shadow queue depth, and the resident
  memory (RSS, from /proc) of the rank pool's gunicorn workers, of the ingestion pool's and of the
  celery worker (main + pool process).

The summary compares with the goals: **zero errors** (any non-2xx, transport error or rejected row)
and **memory flat within 10 %** from the end of the warm-up (``--warmup``, 60 s) to the end, for
the rank pool, the ingestion pool and the celery worker each. The p99 drift (last interval against
the first after the warm-up) is reported beside them. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MB = 1024 * 1024


# -- load generator (runs as its own process) --------------------------------------------------------
def loadgen(args: argparse.Namespace) -> None:
    """Rank requests at a fixed rate and ingestion batches on a timer; one CSV line per request."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    rng = np.random.default_rng(1)
    rank_units = [f"u{int(u)}" for u in rng.integers(0, args.units, size=200_000)]
    # Ingestion bodies are encoded once; each batch only gets a fresh client_batch_id.
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    day = time.strftime("%Y-%m-%d", time.gmtime())
    types = ["impression"] * 3 + ["like", "dwell", "session", "request", "comment", "hide"]
    events = [
        {"unit_id": f"u{int(u)}", "ts": ts, "type": types[i % len(types)],
         **({"value": round(float(v), 1)} if types[i % len(types)] == "dwell" else {})}
        for i, (u, v) in enumerate(zip(rng.integers(0, args.ingest_units, size=args.events_per_batch),
                                       rng.uniform(1, 60, size=args.events_per_batch), strict=True))
    ]  # fmt: skip
    metrics = ["impressions", "sessions", "time_spent", "likes", "comments", "hides", "requests"]
    rows = [
        {"unit_id": f"u{int(u)}", "day": day, "metric": metrics[i % len(metrics)], "value": float(v)}
        for i, (u, v) in enumerate(zip(rng.integers(0, args.ingest_units, size=args.rows_per_batch),
                                       rng.poisson(3.0, size=args.rows_per_batch), strict=True))
    ]  # fmt: skip
    bodies = {  # kind: (endpoint, field, encoded rows, count)
        "events": ("events", "events", json.dumps(events), len(events)),
        "rows": ("metric-rows", "rows", json.dumps(rows), len(rows)),
    }
    headers = {"Authorization": f"Token {args.token}", "Content-Type": "application/json"}
    local = threading.local()
    lock = threading.Lock()
    pending: list[str] = []
    failures: list[str] = []

    def session() -> requests.Session:
        if not hasattr(local, "s"):
            local.s = requests.Session()
            local.s.headers.update(headers)
        return local.s

    def record(kind: str, done: float, ms: float, status: int, count: int) -> None:
        line = f"{kind},{t0_epoch + (done - t0_perf):.3f},{ms:.3f},{status},{count}\n"
        with lock:
            pending.append(line)

    def failed(kind: str, status: int, detail: str) -> None:
        with lock:
            failures.append(f"{time.strftime('%H:%M:%S')} {kind} {status} {' '.join(detail.split())[:300]}\n")

    def rank_one(i: int, scheduled: float) -> None:
        body = json.dumps({"unit_id": rank_units[i % len(rank_units)], "context": {"client": "soak"}})
        try:
            r = session().post(f"{args.url}/api/v1/surfaces/pages/rank", data=body, timeout=30)
            status = r.status_code
            if status != 200:
                failed("rank", status, r.text)
        except Exception as exc:
            status = 0
            failed("rank", status, repr(exc))
        done = time.perf_counter()
        record("rank", done, (done - scheduled) * 1e3, status, 1)

    def ingest_one(kind: str, n: int) -> None:
        endpoint, name, payload, size = bodies[kind]
        batch_id = json.dumps(f"soak-{kind}-{n}-{time.time_ns()}")
        body = f'{{"client_batch_id": {batch_id}, "surface": "pages", "{name}": {payload}}}'
        sent = time.perf_counter()
        accepted = 0
        try:
            r = session().post(
                f"{args.ingest_url or args.url}/api/v1/ingest/{endpoint}/", data=body, timeout=120
            )
            status = r.status_code
            if status == 201:
                accepted = int(r.json()["accepted"])
                if accepted != size:
                    status = 422  # rejected rows count as errors
            if status != 201:
                failed(kind, status, r.text)
        except Exception as exc:
            status = 0
            failed(kind, status, repr(exc))
        done = time.perf_counter()
        record(kind, done, (done - sent) * 1e3, status, accepted)

    def ingestion() -> None:
        every = {k: v for k, v in (("events", args.events_every), ("rows", args.rows_every)) if v > 0}
        due = {k: t0_perf + (args.rows_every / 2 if k == "rows" else 0) for k in every}
        sent = {k: 0 for k in every}
        while due:
            kind = min(due, key=due.__getitem__)
            if due[kind] >= stop_at:
                return
            time.sleep(max(0.0, due[kind] - time.perf_counter()))
            ingest_one(kind, sent[kind])
            sent[kind] += 1
            due[kind] += every[kind]

    with Path(args.out).open("a") as out:

        def flush() -> None:
            with lock:
                lines, pending[:] = pending[:], []
                problems, failures[:] = failures[:], []
            out.writelines(lines)
            out.flush()
            if problems:
                with Path(f"{args.out}.errors").open("a") as f:
                    f.writelines(problems)

        finished = threading.Event()

        def flusher() -> None:
            while not finished.wait(0.5):
                flush()

        t0_perf, t0_epoch = time.perf_counter(), time.time()
        stop_at = t0_perf + args.duration
        out.write(f"start,{t0_epoch:.3f}\n")
        out.flush()
        threads = [threading.Thread(target=ingestion), threading.Thread(target=flusher)]
        for t in threads:
            t.start()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            i = 0
            while (scheduled := t0_perf + i / args.rate) < stop_at:
                time.sleep(max(0.0, scheduled - time.perf_counter()))
                pool.submit(rank_one, i, scheduled)
                i += 1
        threads[0].join()
        finished.set()
        threads[1].join()
        flush()
        out.write("end\n")


# -- processes and memory ----------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def rss(pid: int) -> int:
    """Resident set size in bytes (0 for a process that is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@contextmanager
def throwaway_redis() -> Iterator[str]:
    from bench.serving import free_port

    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found; install redis-server or pass --redis-url")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    for _ in range(100):
        try:
            if client.ping():
                break
        except redis.RedisError:
            time.sleep(0.1)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def start_worker(env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    """``celery worker`` as production runs it (prefork, one pool process on this 2-core box)."""
    log = (workdir / "worker.log").open("w")
    proc = subprocess.Popen(
        [PY, "-m", "celery", "-A", "controlplane.celery", "worker", "--concurrency=1", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "-Q", "celery", "-n", f"soak-{os.getpid()}@%h"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not children(proc.pid):  # the pool process is up once the worker is
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("celery worker did not start:\n" + (workdir / "worker.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc


# -- the soak ----------------------------------------------------------------------------------------
@dataclass
class Interval:
    start: float
    end: float
    rank_ms: list[float] = field(default_factory=list)
    rank_ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    events: int = 0
    rows: int = 0
    ingest_ms: list[float] = field(default_factory=list)
    shadow_done: int = 0
    queue: int = 0
    gunicorn_rss: int = 0
    gunicorn_workers: int = 0
    ingest_rss: int = 0
    ingest_workers: int = 0
    celery_rss: int = 0

    @property
    def seconds(self) -> float:
        return self.end - self.start


Record = tuple[str, float, float, int, int]  # kind, done (epoch s), latency ms, HTTP status, rows accepted


def read_records(path: Path, offset: int) -> tuple[list[Record], int]:
    """The complete CSV lines written since ``offset`` (bytes); (records, new offset)."""
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    records = []
    for line in complete.decode().splitlines():
        parts = line.split(",")
        if len(parts) == 5:
            kind, done, ms, status, count = parts
            records.append((kind, float(done), float(ms), int(status), int(count)))
    return records, offset + len(complete)


def add(iv: Interval, record: Record) -> None:
    kind, _done, ms, status, count = record
    ok = status in (200, 201)
    if not ok:
        key = f"{kind} {status or 'no response'}"
        iv.errors[key] = iv.errors.get(key, 0) + 1
    if kind == "rank":
        if ok:
            iv.rank_ok += 1
            iv.rank_ms.append(ms)
        return
    iv.ingest_ms.append(ms)
    if kind == "events":
        iv.events += count
    else:
        iv.rows += count


def prime(url: str, token: str, concurrency: int) -> None:
    """A first rank request in every gunicorn worker loads the stack bundle (seconds): do that
    before the clock starts, so the warm-up measures a warm server settling, not a cold start."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    def one(i: int) -> int:
        r = requests.post(f"{url}/api/v1/surfaces/pages/rank", json={"unit_id": f"u{i}"},
                          headers={"Authorization": f"Token {token}"}, timeout=300)  # fmt: skip
        return r.status_code

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        statuses = list(pool.map(one, range(concurrency * 4)))
    if any(s != 200 for s in statuses):
        raise SystemExit(f"priming the rank endpoint failed: {statuses}")
    print(f"gunicorn workers primed in {time.perf_counter() - t:.1f} s", flush=True)


def soak(args: argparse.Namespace, database_url: str, redis_url: str) -> bool:
    from bench.serving import pct, start_gunicorn

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": "soak-bench-" + "x" * 40,
        "CONTROLPLANE_VAR_DIR": str(workdir),
        "RANKERS_ARTIFACTS_DIR": os.environ.get("RANKERS_ARTIFACTS_DIR", str(ROOT / "artifacts")),
        "RANKERS_WORLD": args.world,
        "SERVING_LOG_MODE": "background",
        "SERVING_TORCH_THREADS": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "SECURE_SSL_REDIRECT": "false",
        "CELERY_BROKER_URL": f"{redis_url}/0",
        "CELERY_RESULT_BACKEND": f"{redis_url}/1",
    }
    os.environ.update(env)
    import django

    django.setup()
    import redis
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from controlplane.core import services as registry
    from controlplane.core.models import RankingStack, Surface
    from controlplane.core.selectors import allocation_config
    from controlplane.serving.models import Exposure, ShadowComparison
    from controlplane.serving.stacks import stack_registry
    from experiments.ingestion import metric_definitions_ensure

    print(f"database: {database_url.split('@')[-1]}  broker: {redis_url}  world: {args.world}", flush=True)
    call_command("migrate", verbosity=0)
    call_command("seed_demo", "--no-users", verbosity=0)
    pages = Surface.objects.get(key="pages")
    unified = RankingStack.objects.get(key="unified-mtl")
    allocation = registry.allocation_change(
        surface=pages, actor="system:soak", reason="soak: 50 % unified, 10 % of legacy traffic shadowed",
        treatment_stack=unified, treatment_bp=5000, shadow_stack=unified, shadow_bp=args.shadow_bp, salt="soak",
    )  # fmt: skip
    user, _ = User.objects.get_or_create(username="soak")
    user.groups.set([Group.objects.get_or_create(name=n)[0] for n in ("viewer", "operator")])
    token = Token.objects.get_or_create(user=user)[0].key
    metric_definitions_ensure()
    # Units the ingestion client reports on are known: exposed under the live allocation, exactly as
    # the router logs them.
    config = allocation_config(allocation)
    exposures = []
    for i in range(args.ingest_units):
        a = config.assign(f"u{i}")
        exposures.append(
            Exposure(surface=pages, salt=config.salt, unit_id=f"u{i}", arm=a.arm, population=a.population,
                     stack=a.stack, allocation_version=config.version, bucket=a.bucket,
                     first_exposed_at=allocation.created_at)
        )  # fmt: skip
    Exposure.objects.bulk_create(exposures, ignore_conflicts=True, batch_size=5000)
    t = time.perf_counter()
    n_users = int(stack_registry().world.store.n_users)
    print(f"stacks ready in {time.perf_counter() - t:.1f} s ({n_users} users)", flush=True)

    queue = redis.Redis.from_url(f"{redis_url}/0")
    worker = start_worker(env, workdir)
    gen: subprocess.Popen[bytes] | None = None
    stop_gunicorn: Any = None
    stop_ingest: Any = None
    records_path = workdir / "records.csv"
    intervals: list[Interval] = []
    try:
        url, stop_gunicorn = start_gunicorn(args, env, workdir, token)
        ingest_url = url
        if args.ingest_workers > 0:
            ingest_url, stop_ingest = start_gunicorn(
                args, env, workdir, token, workers=args.ingest_workers, threads=args.ingest_threads,
                name="ingest-gunicorn",
            )  # fmt: skip
        prime(url, token, args.workers * args.threads)

        def master_of(pool_url: str) -> int:
            bind = pool_url.removeprefix("http://")
            pid = next(
                (p for p in children(os.getpid()) if "gunicorn" in cmdline(p) and bind in cmdline(p)), None
            )
            if pid is None:
                raise SystemExit(f"gunicorn master process for {bind} not found")
            return pid

        master = master_of(url)
        ingest_master = master_of(ingest_url) if ingest_url != url else None
        records_path.write_text("")
        gen = subprocess.Popen(
            [PY, str(Path(__file__).resolve()), "loadgen", "--url", url, "--ingest-url", ingest_url, "--token", token,
             "--out", str(records_path),
             "--rate", str(args.rate), "--duration", str(args.duration), "--concurrency", str(args.concurrency),
             "--units", str(n_users), "--ingest-units", str(args.ingest_units),
             "--events-every", str(args.events_every), "--events-per-batch", str(args.events_per_batch),
             "--rows-every", str(args.rows_every), "--rows-per-batch", str(args.rows_per_batch)],
            cwd=ROOT,
        )  # fmt: skip
        load_start = os.getloadavg()
        deadline = time.monotonic() + 120
        while not records_path.read_text().startswith("start,"):
            if gen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the load generator did not start")
            time.sleep(0.1)
        started = float(records_path.read_text().split("\n", 1)[0].split(",")[1])
        offset, carry = 0, []
        shadow_seen = ShadowComparison.objects.count()

        header = (
            f"{'t (s)':>7} {'phase':<7} {'rank/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'errors':>6} {'events/s':>9} "
            f"{'rows/s':>7} {'ingest p99 ms':>13} {'shadow/s':>8} {'queue':>5} {'gunicorn RSS MB':>17} "
            f"{'ingest RSS MB':>15} {'celery RSS MB':>13}"
        )
        print(
            f"\nsoak: {args.duration:.0f} s at {args.rate:g} rank rps + {args.events_per_batch} events every "
            f"{args.events_every:g} s + {args.rows_per_batch} metric rows every {args.rows_every:g} s; "
            f"warm-up {args.warmup:.0f} s; rank pool: gunicorn {args.workers} workers × {args.threads} threads; "
            + (
                f"ingestion pool: {args.ingest_workers} workers × {args.ingest_threads} threads\n"
                if ingest_master
                else "ingestion served by the rank pool\n"
            ),
            flush=True,
        )
        print(header)
        print("-" * len(header), flush=True)
        end = started + args.duration
        boundaries = [
            min(started + (k + 1) * args.sample, end)
            for k in range(int(np.ceil(args.duration / args.sample)))
        ]
        for boundary in boundaries:
            while time.time() < boundary:
                if gen.poll() not in (None, 0):
                    raise SystemExit(f"load generator failed ({gen.returncode})")
                time.sleep(max(0.0, min(1.0, boundary - time.time())))
            iv = Interval(intervals[-1].end if intervals else started, boundary)
            workers = children(master)
            iv.gunicorn_workers = len(workers)
            iv.gunicorn_rss = sum(rss(p) for p in workers)
            if ingest_master is not None:
                ingest_workers = children(ingest_master)
                iv.ingest_workers = len(ingest_workers)
                iv.ingest_rss = sum(rss(p) for p in ingest_workers)
            iv.celery_rss = rss(worker.pid) + sum(rss(p) for p in children(worker.pid))
            iv.queue = int(queue.llen("celery"))
            last = boundary >= end
            if last:
                gen.wait(180)  # the requests still in flight at the end belong to the last row
            else:
                time.sleep(0.6)  # the generator writes its lines every 0.5 s
            records, offset = read_records(records_path, offset)
            shadow_now = ShadowComparison.objects.count()
            iv.shadow_done, shadow_seen = shadow_now - shadow_seen, shadow_now
            pending, carry = [*carry, *records], []
            for record in pending:
                if record[1] >= boundary and not last:
                    carry.append(record)  # done after the boundary: the next row's
                else:
                    add(iv, record)
            intervals.append(iv)
            phase = "warm-up" if iv.end - started <= args.warmup + 1e-6 else "soak"
            print(
                f"{iv.end - started:7.0f} {phase:<7} {iv.rank_ok / iv.seconds:7.1f} {pct(iv.rank_ms, 50):7.1f} "
                f"{pct(iv.rank_ms, 99):8.1f} {sum(iv.errors.values()):6d} {iv.events / iv.seconds:9.0f} "
                f"{iv.rows / iv.seconds:7.0f} {pct(iv.ingest_ms, 99):13.0f} {iv.shadow_done / iv.seconds:8.1f} "
                f"{iv.queue:5d} {iv.gunicorn_rss / MB:11.0f} ({iv.gunicorn_workers}w) "
                f"{(f'{iv.ingest_rss / MB:.0f} ({iv.ingest_workers}w)' if ingest_master else '-'):>15} "
                f"{iv.celery_rss / MB:13.0f}",
                flush=True,
            )
    finally:
        if gen is not None and gen.poll() is None:
            gen.terminate()
        if stop_gunicorn is not None:
            stop_gunicorn()
        if stop_ingest is not None:
            stop_ingest()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        show_failures(workdir, records_path)
        shutil.rmtree(workdir, ignore_errors=True)
    return summarize(args, intervals, started, load_start)


def show_failures(workdir: Path, records_path: Path) -> None:
    """On errors: what the clients got, and the tails of the server and worker logs (kept nowhere else)."""
    errors = Path(f"{records_path}.errors")
    if not errors.exists():
        return
    lines = errors.read_text().splitlines()
    print(f"\n{len(lines)} failed requests; the first {min(len(lines), 20)}:")
    for line in lines[:20]:
        print("  " + line)
    for name in ("gunicorn.log", "ingest-gunicorn.log", "worker.log"):
        log = workdir / name
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"\nlast lines of {name}:")
            for line in tail:
                print("  " + line)


def summarize(args: argparse.Namespace, intervals: list[Interval], started: float, load_start: Any) -> bool:
    from bench.serving import pct

    load_end = os.getloadavg()
    warm = [iv for iv in intervals if iv.end - started <= args.warmup + 1e-6]
    steady = [iv for iv in intervals if iv.end - started > args.warmup + 1e-6]
    errors_by_kind: dict[str, int] = {}
    for iv in intervals:
        for kind, n in iv.errors.items():
            errors_by_kind[kind] = errors_by_kind.get(kind, 0) + n
    total_errors = sum(errors_by_kind.values())
    requests = sum(iv.rank_ok for iv in intervals) + sum(
        n for k, n in errors_by_kind.items() if k.startswith("rank ")
    )
    batches = sum(len(iv.ingest_ms) for iv in intervals)
    print(
        f"\nload average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at the start, "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end ({os.cpu_count()} CPUs, shared)"
    )
    if not steady or not warm:
        print("run too short for a warm-up and a steady phase: no drift or memory verdict")
        print(f"errors: {total_errors} {errors_by_kind or ''}")
        return total_errors == 0
    base, last = steady[0], steady[-1]
    all_ms = [ms for iv in steady for ms in iv.rank_ms]
    drift_ms = pct(last.rank_ms, 99) - pct(base.rank_ms, 99)
    drift_pct = 100 * drift_ms / pct(base.rank_ms, 99)
    mem_from = warm[-1]
    g_growth = 100 * (last.gunicorn_rss - mem_from.gunicorn_rss) / mem_from.gunicorn_rss
    c_growth = 100 * (last.celery_rss - mem_from.celery_rss) / mem_from.celery_rss
    pooled = mem_from.ingest_rss > 0
    i_growth = 100 * (last.ingest_rss - mem_from.ingest_rss) / mem_from.ingest_rss if pooled else 0.0
    rows = [
        ("rank requests (whole run)", f"{requests} sent, {sum(iv.rank_ok for iv in intervals)} ok", ""),
        ("rank latency after warm-up", f"p50 {pct(all_ms, 50):.1f} ms, p99 {pct(all_ms, 99):.1f} ms", "(p99 ≤ 40 ms, issue 6)"),
        ("p99 drift, last vs first interval after warm-up",
         f"{pct(base.rank_ms, 99):.1f} → {pct(last.rank_ms, 99):.1f} ms ({drift_ms:+.1f} ms, {drift_pct:+.0f} %)", "reported"),
        ("ingestion batches", f"{batches}: {sum(iv.events for iv in intervals)} events, "
                              f"{sum(iv.rows for iv in intervals)} metric rows accepted", ""),
        ("errors (whole run, incl. warm-up)", f"{total_errors} {errors_by_kind or ''}".strip(), "0"),
        ("gunicorn workers RSS, end of warm-up → end" + (" (rank pool)" if pooled else ""),
         f"{mem_from.gunicorn_rss / MB:.0f} → {last.gunicorn_rss / MB:.0f} MB ({g_growth:+.1f} %)", "within ±10 %"),
        *([("gunicorn workers RSS, end of warm-up → end (ingestion pool)",
            f"{mem_from.ingest_rss / MB:.0f} → {last.ingest_rss / MB:.0f} MB ({i_growth:+.1f} %)", "within ±10 %")]
          if pooled else []),
        ("celery worker RSS, end of warm-up → end",
         f"{mem_from.celery_rss / MB:.0f} → {last.celery_rss / MB:.0f} MB ({c_growth:+.1f} %)", "within ±10 %"),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    missed = []
    if total_errors:
        missed.append(f"{total_errors} errors")
    if abs(g_growth) > 10:
        missed.append(f"gunicorn memory {g_growth:+.1f} %")
    if abs(i_growth) > 10:
        missed.append(f"ingestion pool memory {i_growth:+.1f} %")
    if abs(c_growth) > 10:
        missed.append(f"celery memory {c_growth:+.1f} %")
    print(
        f"\ngoals {'MISSED: ' + '; '.join(missed) if missed else 'met: zero errors, memory flat within 10 %'}"
    )
    return not missed


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.serving import loadgen_parser

    parser, lg = loadgen_parser(__doc__, duration=600, concurrency=32)
    lg.add_argument("--ingest-units", type=int, default=5000)
    lg.add_argument("--ingest-url", default="", help="base URL for ingestion (default: --url)")
    lg.add_argument("--events-every", type=float, default=2.0)
    lg.add_argument("--events-per-batch", type=int, default=2000)
    lg.add_argument("--rows-every", type=float, default=10.0)
    lg.add_argument("--rows-per-batch", type=int, default=5000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default="", help="redis://host:port (databases 0 and 1 are used)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 10 minutes)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds excluded from drift and memory")
    parser.add_argument("--sample", type=float, default=30, help="seconds per table row")
    parser.add_argument("--rate", type=float, default=50, help="rank requests per second (open loop)")
    parser.add_argument("--concurrency", type=int, default=32, help="load generator threads for rank")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--ingest-workers", type=int, default=1,
        help="workers of the ingestion pool (0: ingestion goes to the rank pool, the old set-up)",
    )  # fmt: skip
    parser.add_argument("--ingest-threads", type=int, default=2)
    parser.add_argument("--world", default="small", choices=["small", "default"])
    parser.add_argument(
        "--shadow-bp", type=int, default=1000, help="share of requests shadowed, basis points"
    )
    parser.add_argument(
        "--ingest-units", type=int, default=5000, help="exposed units the ingestion reports on"
    )
    parser.add_argument(
        "--events-every", type=float, default=2.0, help="seconds between event batches (0: none)"
    )
    parser.add_argument("--events-per-batch", type=int, default=2000)
    parser.add_argument(
        "--rows-every", type=float, default=10.0, help="seconds between metric-row batches (0: none)"
    )
    parser.add_argument("--rows-per-batch", type=int, default=5000)
    args = parser.parse_args()
    if args.command == "loadgen":
        loadgen(args)
        return
    from bench.serving import throwaway_postgres

    with (
        nullcontext(args.database_url) if args.database_url else throwaway_postgres() as database_url,
        nullcontext(args.redis_url.rstrip("/")) if args.redis_url else throwaway_redis() as redis_url,
    ):
        ok = soak(args, database_url, redis_url)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
