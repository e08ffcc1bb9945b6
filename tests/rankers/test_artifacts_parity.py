"""Artifacts (weights + config + sha256 + metrics), torch.export, quantization, parity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rankers.engine import RankRequest, build_stack
from rankers.engine.artifacts import (
    ArtifactError,
    export_example_inputs,
    load_exported,
    save_stacks,
    verify,
)
from rankers.engine.nets import MTLPredictor, quantize_dynamic_int8
from rankers.engine.parity import parity_experiment


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    manifests = save_stacks(trained, out)
    return out, manifests


def test_artifacts_have_weights_config_metrics_and_checksums(saved, small_world):
    out, manifests = saved
    for kind, manifest in manifests.items():
        d = out / "small" / kind
        assert {"weights.pt", "config.json", "metrics.json"} <= set(manifest["files"])
        assert verify(d)["sha256"] == manifest["sha256"]
        assert manifest["stack_key"].startswith(kind)
    metrics = json.loads((out / "small" / "unified_mtl" / "metrics.json").read_text())
    assert set(metrics["heads"]) == {"like", "comment", "share", "hide", "report", "dwell"}
    assert "model.pt2" in manifests["unified_mtl"]["files"]


@pytest.mark.parametrize("kind", ["content_first", "interest_first", "unified_mtl"])
def test_loaded_stack_ranks_like_the_trained_one(saved, stacks, small_world, kind):
    out, _ = saved
    loaded = build_stack(kind, small_world, artifacts_dir=out)
    assert loaded is not stacks[kind] and loaded.stack_key == stacks[kind].stack_key
    for u in (3, 77, 1001):
        a = stacks[kind].rank(RankRequest(u, "pages"))
        b = loaded.rank(RankRequest(u, "pages"))
        assert a.post_ids == b.post_ids
        np.testing.assert_allclose(
            [i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-6
        )


def test_tampered_weights_are_detected(saved, tmp_path):
    out, _ = saved
    import shutil

    copy = tmp_path / "cf"
    shutil.copytree(out / "small" / "content_first", copy)
    with (copy / "weights.pt").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError):
        verify(copy)


def test_torch_export_scores_like_the_original(saved, stacks):
    out, _ = saved
    unified = stacks["unified_mtl"]
    exported = load_exported(out / "small" / "unified_mtl" / "model.pt2")
    ids = np.array(unified.rank(RankRequest(11, "groups")).post_ids)
    dense = unified.recompute_features(unified.store, 11, "groups", ids)
    original = unified.predict(11, "groups", ids, dense)
    from rankers.engine.features import sparse_features

    sparse = torch.from_numpy(sparse_features(unified.store, np.full(ids.size, 11), ids, 1))
    with torch.inference_mode():
        got = exported(sparse, torch.from_numpy(dense)).numpy()
    np.testing.assert_allclose(got, original, rtol=1e-5, atol=1e-6)
    # Another batch size goes through the same program (dynamic batch dimension).
    s, d = export_example_inputs(unified.predictor.model.cfg, batch=3)
    with torch.inference_mode():
        np.testing.assert_allclose(
            exported(s, d).numpy(), unified.predictor(s, d).numpy(), rtol=1e-5, atol=1e-6
        )


def test_export_loads_in_a_process_without_our_code(saved, tmp_path):
    out, _ = saved
    code = (
        "import sys, torch; sys.modules.pop('rankers', None);"
        f"m = torch.export.load(r'{out / 'small' / 'unified_mtl' / 'model.pt2'}').module();"
        "y = m(torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, 20));"
        "assert y.shape == (4, 6) and 'rankers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_dynamic_int8_quantization_keeps_the_ranking(stacks):
    unified = stacks["unified_mtl"]
    quantized = quantize_dynamic_int8(MTLPredictor(unified.predictor.model))
    ids = np.array(unified.rank(RankRequest(21, "pages")).post_ids)
    dense = unified.recompute_features(unified.store, 21, "pages", ids)
    from rankers.engine.features import sparse_features

    sparse = torch.from_numpy(sparse_features(unified.store, np.full(ids.size, 21), ids, 0))
    with torch.inference_mode():
        fp = unified.predictor(sparse, torch.from_numpy(dense)).numpy()
        q8 = quantized(sparse, torch.from_numpy(dense)).numpy()
    v_fp, v_q8 = unified.value_weights.score(fp), unified.value_weights.score(q8)
    assert np.corrcoef(v_fp, v_q8)[0, 1] > 0.99


@pytest.mark.parametrize("kind", ["content_first", "interest_first", "unified_mtl"])
def test_parity_is_exact_without_skew(stacks, small_world, kind):
    report, _ = parity_experiment(small_world, stacks[kind], np.arange(0, 300, 30))
    assert report.n_rows == 10 * 50
    assert report.row_mismatch_rate == 0.0
    assert report.score_max_abs_diff < 1e-5


def test_parity_detects_counter_skew_and_restores_the_world(stacks, small_world):
    before = small_world.store.post_impressions.copy()
    report, _offline = parity_experiment(
        small_world, stacks["unified_mtl"], np.arange(0, 200, 20), np.arange(0, 600, 2)
    )
    stale = {"log_post_impressions", "post_like_rate", "post_hide_rate"}
    assert all(report.feature_mismatch_rate[f] > 0.2 for f in stale)
    assert all(v == 0.0 for f, v in report.feature_mismatch_rate.items() if f not in stale)
    assert report.score_mean_abs_diff > 0
    assert np.array_equal(small_world.store.post_impressions, before)
