"""Django side: trained artifacts registered as stack versions through controlplane's service."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from django.core.management import call_command

from controlplane.core.errors import ApplicationError
from controlplane.core.models import AuditEvent, RankingStack
from rankers.models import TrainedArtifact
from rankers.services import artifact_register


@pytest.fixture(scope="module")
def artifact_root(trained, tmp_path_factory):
    from rankers.engine.artifacts import save_stacks

    out = tmp_path_factory.mktemp("registry-artifacts")
    save_stacks(trained, out, export=False)
    return out


def _bench_for(trained, kind_key_override: str | None = None) -> dict:
    """A bench JSON shaped like bench/rankers.py's output for the trained unified stack."""
    key = kind_key_override or trained.unified.stack_key
    return {
        "device": "cpu",
        "capacity": {
            "unified_mtl": {
                "stack_key": key,
                "p99_budget_ms": 15.0,
                "meets_budget": True,
                "threads": 1,
                "throughput_rps_per_replica": 180.0,
                "p99_ms": 9.5,
                "device": "cpu",
            },
        },
        "results": {
            "stacks": {
                "unified_mtl": {
                    "1": {"p50_ms": 5.0, "p99_ms": 9.5, "mean_ms": 5.5, "stages": {"pass1": {"p50_ms": 1.5}}}
                }
            }
        },
    }


@pytest.mark.django_db
def test_register_creates_a_stack_version_linked_to_the_artifact(artifact_root, trained):
    d = artifact_root / "small" / "unified_mtl"
    manifest = json.loads((d / "manifest.json").read_text())
    artifact = artifact_register(artifact_dir=d, actor="system:test")
    stack = artifact.stack
    assert (stack.key, stack.version, stack.kind) == (
        "unified-mtl",
        f"small-{manifest['sha256'][:12]}",
        "unified_mtl",
    )
    assert stack.status == RankingStack.Status.CANDIDATE
    assert stack.artifact["sha256"] == manifest["sha256"] == artifact.sha256
    assert artifact.engine_stack_key == trained.unified.stack_key
    assert stack.offline_metrics["ndcg"]["ndcg@10"] == pytest.approx(
        trained.metrics["ndcg"]["unified_mtl"]["ndcg@10"]
    )
    assert set(stack.offline_metrics["heads"]) == {"like", "comment", "share", "hide", "report", "dwell"}
    assert stack.throughput_per_replica is None  # no bench yet
    assert AuditEvent.objects.filter(verb="artifact.register", target_id=str(artifact.pk)).count() == 1
    # Idempotent: the same weights map to the same version and row.
    again = artifact_register(artifact_dir=d, actor="system:test")
    assert again.pk == artifact.pk
    assert RankingStack.objects.filter(key="unified-mtl").count() == 1
    assert AuditEvent.objects.filter(verb="artifact.register").count() == 1


@pytest.mark.django_db
def test_bench_figures_are_recorded_only_for_the_benchmarked_artifact(artifact_root, trained):
    d = artifact_root / "small" / "unified_mtl"
    artifact_register(
        artifact_dir=d, actor="system:test", bench=_bench_for(trained, "unified_mtl@someotherweights")
    )
    stack = RankingStack.objects.get(key="unified-mtl")
    assert stack.throughput_per_replica is None and stack.p99_latency_ms is None
    artifact = artifact_register(artifact_dir=d, actor="system:test", bench=_bench_for(trained))
    stack.refresh_from_db()
    assert stack.throughput_per_replica == 180.0
    assert stack.p99_latency_ms == 9.5 and stack.p50_latency_ms == 5.0
    assert stack.host_cpu_ms_per_request == pytest.approx(4.0)
    assert stack.latency_slo_ms == 15.0
    assert artifact.bench["throughput_per_replica"] == 180.0
    assert AuditEvent.objects.filter(verb="artifact.bench").count() == 1


@pytest.mark.django_db
def test_tampered_or_missing_artifacts_are_refused(artifact_root, tmp_path):
    copy = tmp_path / "cf"
    shutil.copytree(artifact_root / "small" / "content_first", copy)
    (copy / "config.json").write_text("{}")
    with pytest.raises(ApplicationError) as err:
        artifact_register(artifact_dir=copy, actor="system:test")
    assert err.value.field == "artifact_dir" and "sha256" in err.value.message
    with pytest.raises(ApplicationError):
        artifact_register(artifact_dir=tmp_path / "nothing-here", actor="system:test")
    assert not TrainedArtifact.objects.exists() and not RankingStack.objects.exists()


@pytest.mark.django_db
def test_train_stacks_command_registers_all_three(artifact_root, tmp_path, trained):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench_for(trained)))
    call_command(
        "train_stacks",
        "--skip-train",
        "--world",
        "small",
        "--out",
        str(artifact_root),
        "--bench-json",
        str(bench),
        stdout=io.StringIO(),
    )
    kinds = dict(TrainedArtifact.objects.values_list("kind", "stack__key"))
    assert kinds == {
        "content_first": "content-first",
        "interest_first": "interest-first",
        "unified_mtl": "unified-mtl",
    }
    assert RankingStack.objects.get(key="content-first").status == RankingStack.Status.ACTIVE
    assert RankingStack.objects.get(key="unified-mtl").throughput_per_replica == 180.0
