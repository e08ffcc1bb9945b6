"""The analysts' command line, run as a subprocess exactly as documented in issue 4."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind

from experiments.stats import CovariateMeanStatistic, cuped, noninferiority

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "experiments.stats", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_json(*args: str) -> dict:
    proc = run(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def mean_csv(tmp_path):
    rng = np.random.default_rng(8)
    rows = ["unit_id,arm,y,x"]
    data = {"control": ([], []), "treatment": ([], [])}
    for i in range(1_200):
        arm = "control" if i % 3 else "treatment"
        x = rng.normal(20, 4)
        y = 0.6 * x + rng.normal(3 + (0.2 if arm == "treatment" else 0.0), 2)
        rows.append(f"u{i},{arm},{y!r},{x!r}")
        data[arm][0].append(y)
        data[arm][1].append(x)
    path = tmp_path / "export.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, {a: (np.array(v[0]), np.array(v[1])) for a, v in data.items()}


def test_analyze_mean_with_covariate_and_margins(mean_csv):
    path, data = mean_csv
    out = run_json(
        "analyze", "--data", str(path), "--covariate", "x", "--margin-rel", "0.05",
        "--noninferiority-margin-rel", "0.02", "--direction", "higher", "--alpha", "0.05",
    )  # fmt: skip
    (yc, xc), (yt, xt) = data["control"], data["treatment"]
    ref = scipy.stats.ttest_ind(yt, yc, equal_var=False)
    assert out["n"] == {"control": yc.size, "treatment": yt.size}
    assert out["mean"]["control"] == pytest.approx(yc.mean(), rel=1e-12)
    assert out["variance"]["treatment"] == pytest.approx(yt.var(ddof=1), rel=1e-9)
    assert out["diff"] == pytest.approx(yt.mean() - yc.mean(), rel=1e-10)
    assert out["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)
    assert out["df"] == pytest.approx(ref.df, rel=1e-9)
    assert out["ci"] == pytest.approx(list(ref.confidence_interval(0.95)), rel=1e-8)
    assert out["rel_lift"] == pytest.approx(yt.mean() / yc.mean() - 1, rel=1e-10)
    assert len(out["rel_lift_ci"]) == 2
    assert set(out["cuped"]) >= {
        "theta",
        "diff",
        "se",
        "df",
        "p_value",
        "ci",
        "variance_reduction",
        "rel_lift",
        "rel_lift_ci",
    }
    adj = cuped(CovariateMeanStatistic.from_values(yc, xc), CovariateMeanStatistic.from_values(yt, xt))
    assert out["cuped"]["p_value"] == pytest.approx(adj.p_value, rel=1e-9)
    assert out["cuped"]["variance_reduction"] > 0.5
    # Equivalence applies to the CUPED difference, with δ = m × the unadjusted control mean.
    delta = 0.05 * yc.mean()
    eq = out["equivalence"]
    assert eq["margin"] == pytest.approx(delta, rel=1e-12)
    assert set(eq) >= {"margin", "p_value", "p_lower", "p_upper", "ci", "equivalent"}
    assert eq["p_value"] == pytest.approx(max(eq["p_lower"], eq["p_upper"]))
    ni = out["noninferiority"]
    assert set(ni) >= {"margin", "direction", "p_value", "bound", "noninferior"}
    ref_ni = noninferiority(adj, 0.02, "higher", relative=True)
    assert ni["p_value"] == pytest.approx(ref_ni.p_value, rel=1e-9) and ni["bound"] == pytest.approx(
        ref_ni.bound
    )
    assert out["computable"] is True and out["reason"] == ""


def test_analyze_without_covariate_pins_tost_to_statsmodels(mean_csv):
    path, data = mean_csv
    out = run_json("analyze", "--data", str(path), "--margin-abs", "0.5")
    (yc, _), (yt, _) = data["control"], data["treatment"]
    p, lower, _upper = ttost_ind(yt, yc, -0.5, 0.5, usevar="unequal")
    assert out["cuped"] is None and out["noninferiority"] is None
    assert out["equivalence"]["p_value"] == pytest.approx(p, rel=1e-8)
    assert out["equivalence"]["p_lower"] == pytest.approx(lower[1], rel=1e-8)


def test_analyze_ratio_metric(tmp_path):
    rng = np.random.default_rng(2)
    rows = ["unit_id,arm,num,den"]
    for i in range(600):
        den = int(rng.poisson(15)) + 1
        rows.append(f"{i},{'control' if i % 2 else 'treatment'},{int(rng.binomial(den, 0.2))},{den}")
    path = tmp_path / "ratio.csv"
    path.write_text("\n".join(rows) + "\n")
    out = run_json("analyze", "--data", str(path), "--metric-type", "ratio")
    assert out["df"] is None and out["metric_type"] == "ratio"
    assert 0.1 < out["mean"]["control"] < 0.3  # each arm's ratio
    assert out["p_value"] is not None and out["computable"]


def test_analyze_table_format(mean_csv):
    path, _ = mean_csv
    proc = run("analyze", "--data", str(path), "--format", "table")
    assert proc.returncode == 0
    assert "p_value" in proc.stdout and "mean.control" in proc.stdout


def test_not_computable_is_reported_not_crashed(tmp_path):
    path = tmp_path / "flat.csv"
    path.write_text("unit_id,arm,y\n1,control,2\n2,control,2\n3,treatment,2\n4,treatment,2\n")
    out = run_json("analyze", "--data", str(path))
    assert out["computable"] is False and "zero variance" in out["reason"]
    assert out["p_value"] is None and out["ci"] is None


@pytest.mark.parametrize(
    "content,message",
    [
        ("unit_id,arm,value\n1,control,1\n", "missing column 'y'"),
        ("unit_id,arm,y\n1,control,1\n2,treatmnt,2\n", "row 2 (line 3): unknown arm 'treatmnt'"),
        (
            "unit_id,arm,y\n1,control,1\n2,treatment,2\n3,control,abc\n",
            "row 3 (line 4): column 'y' value 'abc' is not a number",
        ),
        ("unit_id,arm,y\n1,control,1\n1,treatment,2\n", "duplicate unit_id '1'"),
        ("unit_id,arm,y\n1,control,nan\n", "not a finite number"),
    ],
)
def test_bad_input_gets_a_clear_error_and_non_zero_exit(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    proc = run("analyze", "--data", str(path), "--format", "json")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == ""


def test_missing_file_and_missing_covariate(tmp_path):
    assert run("analyze", "--data", str(tmp_path / "nope.csv")).returncode != 0
    path = tmp_path / "a.csv"
    path.write_text("unit_id,arm,y\n1,control,1\n")
    proc = run("analyze", "--data", str(path), "--covariate", "x")
    assert proc.returncode != 0 and "missing column 'x'" in proc.stderr


def test_srm_command():
    out = run_json("srm", "--observed", "50600,49400", "--weights", "0.5,0.5")
    ref = scipy.stats.chisquare([50600, 49400])
    assert out["chi2"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(
        ref.pvalue, rel=1e-9
    )
    assert out["flagged"] is True
    bad = run("srm", "--observed", "10,x")
    assert bad.returncode != 0 and "item 2" in bad.stderr


def test_adjust_command():
    out = run_json("adjust", "--method", "holm", "--p", "0.01,0.04,0.2")
    reject, adjusted, _, _ = multipletests([0.01, 0.04, 0.2], method="holm")
    assert out["adjusted"] == pytest.approx(list(adjusted)) and out["reject"] == list(reject)
    assert run("adjust", "--method", "nope", "--p", "0.1").returncode != 0


def test_power_command():
    out = run_json(
        "power",
        "--cv",
        "2",
        "--rel-mde",
        "0.01",
        "--alpha",
        "0.05",
        "--power",
        "0.8",
        "--cuped-rho",
        "0.5",
        "--split",
        "0.01",
    )
    assert out["n_per_arm"] == pytest.approx(out["n_treatment"])
    assert out["n_per_arm_rounded"] == int(np.ceil(out["n_per_arm"]))
    assert isinstance(out["n_per_arm"], float)
    table = run("power", "--cv", "2", "--rel-mde", "0.01", "--format", "table")
    assert table.returncode == 0 and "n_per_arm_rounded" in table.stdout
    assert run("power", "--cv", "-1", "--rel-mde", "0.01").returncode != 0


def test_analyze_ratio_metric_with_pre_period_ratio_covariate(tmp_path):
    from experiments.stats import CovariateRatioStatistic, cuped_ratio, ratio_delta

    rng = np.random.default_rng(4)
    rows = ["unit_id,arm,num,den,pre_num,pre_den"]
    arms: dict[str, list[list[float]]] = {"control": [], "treatment": []}
    for i in range(800):
        arm = "control" if i % 2 else "treatment"
        activity = rng.gamma(2.0, 8.0)
        den, pre_den = int(rng.poisson(activity)) + 1, int(rng.poisson(activity)) + 1
        num, pre_num = int(rng.binomial(den, 0.15)), int(rng.binomial(pre_den, 0.15))
        rows.append(f"{i},{arm},{num},{den},{pre_num},{pre_den}")
        arms[arm].append([num, den, pre_num, pre_den])
    path = tmp_path / "ratio_pre.csv"
    path.write_text("\n".join(rows) + "\n")
    out = run_json(
        "analyze",
        "--data",
        str(path),
        "--metric-type",
        "ratio",
        "--covariate",
        "pre_num,pre_den",
        "--margin-rel",
        "0.1",
    )
    c = CovariateRatioStatistic.from_values(*np.array(arms["control"]).T)
    t = CovariateRatioStatistic.from_values(*np.array(arms["treatment"]).T)
    assert out["p_value"] == pytest.approx(ratio_delta(c.ratio, t.ratio).p_value, rel=1e-9)
    assert out["cuped"]["p_value"] == pytest.approx(cuped_ratio(c, t).p_value, rel=1e-9)
    assert out["cuped"]["df"] is None and out["equivalence"]["applies_to"] == "cuped"
    # A metric column may double as the covariate (pre_den defaults to 1).
    assert (
        run_json("analyze", "--data", str(path), "--covariate", "num", "--metric-type", "ratio")["cuped"][
            "theta"
        ]
        is not None
    )


def test_analyze_reports_skewness_and_the_kohavi_rule(tmp_path):
    # Issue #16: fields ADDED to the contract (nothing renamed): skewness per arm, skew_rule.
    rng = np.random.default_rng(4)
    rows = ["unit_id,arm,y"]
    arms = {"control": [], "treatment": []}
    for i in range(600):
        arm = "control" if i % 2 else "treatment"
        y = 0.0 if rng.random() < 0.8 else float(rng.lognormal(1.0, 1.5))
        rows.append(f"u{i},{arm},{y!r}")
        arms[arm].append(y)
    path = tmp_path / "skewed.csv"
    path.write_text("\n".join(rows) + "\n")
    out = run_json("analyze", "--data", str(path))
    for arm, values in arms.items():
        assert out["skewness"][arm] == pytest.approx(scipy.stats.skew(values), rel=1e-9)
    need = max(int(355 * scipy.stats.skew(v) ** 2) + 1 for v in arms.values())
    rule = out["skew_rule"]
    assert (rule["need"], rule["have"], rule["holds"]) == (need, 300, False)
    assert rule["message"] == f"too few units for a skewed metric: need {need}, have 300"
    # The existing fields are all still there, unchanged in name.
    for key in (
        "metric_type",
        "method",
        "alpha",
        "n",
        "mean",
        "variance",
        "diff",
        "se",
        "p_value",
        "ci",
        "rel_lift",
        "rel_lift_ci",
        "cuped",
        "equivalence",
        "noninferiority",
        "computable",
        "reason",
    ):
        assert key in out
    table = run("analyze", "--data", str(path), "--format", "table")
    assert "skew_rule.holds" in table.stdout and "skewness.control" in table.stdout
