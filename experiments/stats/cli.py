"""Command line for analysts: ``python -m experiments.stats {analyze,srm,adjust,power}``.

Contract (issue 4):

- ``analyze --data FILE.csv [--covariate COL] [--metric-type mean|ratio]
  [--margin-rel M | --margin-abs D] [--noninferiority-margin-rel M --direction higher|lower]
  [--alpha 0.05] --format json|table``; CSV columns ``unit_id,arm,y[,x]`` or
  ``unit_id,arm,num,den``; arms ``control`` and ``treatment``.
- ``srm --observed 50600,49400 --weights 0.5,0.5`` → {chi2, p_value, flagged}
- ``adjust --method bonferroni|holm|bh|by --p 0.01,0.04,0.2`` → {adjusted, reject}
- ``power --cv C --rel-mde M --alpha A --power P [--cuped-rho R] [--split S]`` →
  {n_per_arm (unrounded), n_per_arm_rounded, …}

``analyze`` also reports (added by issue #16; no field was renamed) ``skewness``
{control, treatment} (g₁, null for ratio metrics) and ``skew_rule`` {need, have, holds,
skewness, arm, message}: Kohavi et al. (2014), n > 355·s² in each arm
(``experiments.stats.skew``).

Bad input (a missing column, an unknown arm, a non-numeric value — with its row number)
prints ``error: …`` to stderr and exits with status 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.stats.comparisons import cuped, cuped_ratio, ratio_delta, welch
from experiments.stats.equivalence import noninferiority, tost
from experiments.stats.multiple import METHODS, adjust_pvalues
from experiments.stats.power import sample_size
from experiments.stats.results import ComparisonResult
from experiments.stats.skew import skew_rule_arms
from experiments.stats.srm import srm
from experiments.stats.statistics import (
    CovariateMeanStatistic,
    CovariateRatioStatistic,
    MeanStatistic,
    RatioStatistic,
)

ARMS = ("control", "treatment")
EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad user input: reported as ``error: …`` with exit status 2."""


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _read_csv(path: str, columns: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per arm, a float array per requested column; validates every row."""
    columns = list(dict.fromkeys(columns))  # a covariate may reuse a metric column
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InputError(f"{path} is empty (expected a header row)") from None
        required = ["unit_id", "arm", *columns]
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
                f"in {path} (found: {', '.join(header) or 'none'})"
            )
        idx = {c: header.index(c) for c in required}
        values: dict[str, dict[str, list[float]]] = {a: {c: [] for c in columns} for a in ARMS}
        seen: dict[str, int] = {}
        for row_no, row in enumerate(reader, start=1):
            where = f"row {row_no} (line {row_no + 1})"
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise InputError(f"{where}: expected {len(header)} fields, got {len(row)}")
            arm = row[idx["arm"]].strip()
            if arm not in ARMS:
                raise InputError(f"{where}: unknown arm {arm!r} (expected 'control' or 'treatment')")
            unit = row[idx["unit_id"]].strip()
            if not unit:
                raise InputError(f"{where}: empty unit_id")
            if unit in seen:
                raise InputError(f"{where}: duplicate unit_id {unit!r} (first seen in row {seen[unit]})")
            seen[unit] = row_no
            for c in columns:
                raw = row[idx[c]].strip()
                try:
                    v = float(raw)
                except ValueError:
                    raise InputError(f"{where}: column {c!r} value {raw!r} is not a number") from None
                if not math.isfinite(v):
                    raise InputError(f"{where}: column {c!r} value {raw!r} is not a finite number")
                values[arm][c].append(v)
    return {a: {c: np.asarray(v, dtype=np.float64) for c, v in cols.items()} for a, cols in values.items()}


def _comparison_block(r: ComparisonResult) -> dict[str, Any]:
    return {
        "diff": r.diff,
        "se": r.se,
        "df": r.df,
        "p_value": r.p_value,
        "ci": list(r.ci) if r.ci else None,
        "rel_lift": r.rel_lift,
        "rel_lift_ci": list(r.rel_lift_ci) if r.rel_lift_ci else None,
    }


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    with_header = _peek_header(args.data)
    metric_type = args.metric_type
    if metric_type is None:
        metric_type = (
            "ratio" if ("num" in with_header and "den" in with_header and "y" not in with_header) else "mean"
        )
    cov_cols: list[str] = []
    if args.covariate:
        cov_cols = [c.strip() for c in args.covariate.split(",") if c.strip()]
        if metric_type == "mean" and len(cov_cols) != 1:
            raise InputError("--covariate takes one column for a mean metric")
        if metric_type == "ratio" and len(cov_cols) not in (1, 2):
            raise InputError("--covariate takes PRE_NUM[,PRE_DEN] for a ratio metric")
    base = ["y"] if metric_type == "mean" else ["num", "den"]
    data = _read_csv(args.data, base + cov_cols)
    c, t = data["control"], data["treatment"]
    alpha = args.alpha

    unadjusted: ComparisonResult
    adjusted: ComparisonResult | None = None
    skew: dict[str, float | None] = {"control": None, "treatment": None}
    if metric_type == "mean":
        if cov_cols:
            sc = CovariateMeanStatistic.from_values(c["y"], c[cov_cols[0]])
            st = CovariateMeanStatistic.from_values(t["y"], t[cov_cols[0]])
            unadjusted = welch(sc.y, st.y, alpha)
            adjusted = cuped(sc, st, alpha)
            skew = {"control": sc.skewness, "treatment": st.skewness}
        else:
            mc, mt = MeanStatistic.from_values(c["y"]), MeanStatistic.from_values(t["y"])
            unadjusted = welch(mc, mt, alpha)
            skew = {"control": mc.skewness, "treatment": mt.skewness}
    else:
        if cov_cols:

            def stat(arm: dict[str, np.ndarray]) -> CovariateRatioStatistic:
                pre_den = arm[cov_cols[1]] if len(cov_cols) == 2 else np.ones_like(arm["num"])
                return CovariateRatioStatistic.from_values(arm["num"], arm["den"], arm[cov_cols[0]], pre_den)

            rc, rt = stat(c), stat(t)
            unadjusted = ratio_delta(rc.ratio, rt.ratio, alpha)
            adjusted = cuped_ratio(rc, rt, alpha)
        else:
            unadjusted = ratio_delta(
                RatioStatistic.from_values(c["num"], c["den"]),
                RatioStatistic.from_values(t["num"], t["den"]),
                alpha,
            )
    target = adjusted if adjusted is not None else unadjusted
    out: dict[str, Any] = {
        "metric_type": metric_type,
        "method": unadjusted.method,
        "alpha": alpha,
        "n": {"control": unadjusted.n_control, "treatment": unadjusted.n_treatment},
        "mean": {"control": unadjusted.control_mean, "treatment": unadjusted.treatment_mean},
        "variance": {"control": unadjusted.control_variance, "treatment": unadjusted.treatment_variance},
        **_comparison_block(unadjusted),
        "cuped": None,
        "equivalence": None,
        "noninferiority": None,
    }
    if adjusted is not None:
        out["cuped"] = {
            "theta": adjusted.theta,
            **_comparison_block(adjusted),
            "variance_reduction": adjusted.variance_reduction,
            "computable": adjusted.computable,
            "reason": adjusted.reason,
        }
    if args.margin_rel is not None or args.margin_abs is not None:
        relative = args.margin_rel is not None
        margin = args.margin_rel if relative else args.margin_abs
        # A relative margin scales the *unadjusted* control mean (the contract): every
        # result's control_mean is the observed one, CUPED's adjusted mean is separate.
        eq = tost(target, margin, alpha, relative=relative)
        out["equivalence"] = {
            "margin": eq.margin,
            "margin_rel": args.margin_rel,
            "applies_to": "cuped" if adjusted is not None else "unadjusted",
            "p_value": eq.p_value,
            "p_lower": eq.p_lower,
            "p_upper": eq.p_upper,
            "ci": list(eq.ci) if eq.ci else None,
            "equivalent": eq.equivalent,
            "computable": eq.computable,
            "reason": eq.reason,
        }
    if args.noninferiority_margin_rel is not None or args.noninferiority_margin_abs is not None:
        relative = args.noninferiority_margin_rel is not None
        margin = args.noninferiority_margin_rel if relative else args.noninferiority_margin_abs
        ni = noninferiority(target, margin, args.direction, alpha, relative=relative)
        out["noninferiority"] = {
            "margin": ni.margin,
            "margin_rel": args.noninferiority_margin_rel,
            "direction": ni.direction,
            "applies_to": "cuped" if adjusted is not None else "unadjusted",
            "p_value": ni.p_value,
            "bound": ni.bound,
            "noninferior": ni.noninferior,
            "computable": ni.computable,
            "reason": ni.reason,
        }
    # Added fields (issue #16): each arm's skewness and the Kohavi et al. (2014) rule n > 355·s²
    # per arm (ratio metrics: skewness not computed, the rule puts no requirement).
    rule = skew_rule_arms(
        (skew["control"], unadjusted.n_control), (skew["treatment"], unadjusted.n_treatment)
    )
    out["skewness"] = skew
    out["skew_rule"] = rule.to_dict()
    reasons = [r for r in (unadjusted.reason, adjusted.reason if adjusted else "") if r]
    out["computable"] = unadjusted.computable and (adjusted is None or adjusted.computable)
    out["reason"] = "; ".join(dict.fromkeys(reasons))
    return out


def _peek_header(path: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            first = next(csv.reader(handle), [])
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return [h.strip() for h in first]


def _floats(text: str, name: str) -> list[float]:
    out = []
    for i, part in enumerate(text.split(","), start=1):
        try:
            v = float(part.strip())
        except ValueError:
            raise InputError(f"{name}: item {i} {part.strip()!r} is not a number") from None
        if not math.isfinite(v):
            raise InputError(f"{name}: item {i} {part.strip()!r} is not a finite number")
        out.append(v)
    return out


def _srm(args: argparse.Namespace) -> dict[str, Any]:
    observed = _floats(args.observed, "--observed")
    if any(o != int(o) or o < 0 for o in observed):
        raise InputError("--observed must be non-negative whole counts")
    weights = _floats(args.weights, "--weights") if args.weights else None
    try:
        res = srm([int(o) for o in observed], weights)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return {
        "chi2": res.chi2,
        "df": res.df,
        "p_value": res.p_value,
        "flagged": res.flagged,
        "threshold": res.threshold,
        "observed": list(res.observed),
        "expected": list(res.expected),
        "computable": res.computable,
        "reason": res.reason,
    }


def _adjust(args: argparse.Namespace) -> dict[str, Any]:
    p = _floats(args.p, "--p")
    try:
        res = adjust_pvalues(p, args.method, args.alpha)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return {
        "method": res.method,
        "alpha": res.alpha,
        "p": p,
        "adjusted": list(res.adjusted),
        "reject": list(res.reject),
    }


def _power(args: argparse.Namespace) -> dict[str, Any]:
    try:
        res = sample_size(
            cv=args.cv,
            rel_mde=args.rel_mde,
            alpha=args.alpha,
            power=args.power,
            cuped_rho=args.cuped_rho,
            split=args.split,
            daily_units=args.daily_units,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return res.to_dict()


def _table(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_table(value, name + "."))
        elif isinstance(value, list):
            rows.append((name, "[" + ", ".join(_fmt(v) for v in value) + "]"))
        else:
            rows.append((name, _fmt(value)))
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.stats", description="Experiment statistics engine."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def fmt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=("json", "table"), default="json")

    a = sub.add_parser("analyze", help="compare control and treatment from a per-unit CSV export")
    a.add_argument("--data", required=True, help="CSV with unit_id,arm,y[,x] or unit_id,arm,num,den")
    a.add_argument("--covariate", help="pre-period covariate column (ratio metrics: PRE_NUM[,PRE_DEN])")
    a.add_argument("--metric-type", choices=("mean", "ratio"), default=None, help="default: from the columns")
    margin = a.add_mutually_exclusive_group()
    margin.add_argument(
        "--margin-rel", type=float, help="TOST margin relative to the unadjusted control mean"
    )
    margin.add_argument("--margin-abs", type=float, help="TOST margin in metric units")
    ni = a.add_mutually_exclusive_group()
    ni.add_argument("--noninferiority-margin-rel", type=float, help="non-inferiority margin, relative")
    ni.add_argument("--noninferiority-margin-abs", type=float, help="non-inferiority margin, metric units")
    a.add_argument("--direction", choices=("higher", "lower"), default="higher", help="which way is better")
    a.add_argument("--alpha", type=float, default=0.05)
    fmt(a)

    s = sub.add_parser("srm", help="sample ratio mismatch (χ² against the configured split)")
    s.add_argument("--observed", required=True, help="unit counts per arm, comma-separated")
    s.add_argument("--weights", help="configured split per arm, comma-separated (default: equal)")
    fmt(s)

    j = sub.add_parser("adjust", help="multiple-testing adjustment")
    j.add_argument("--method", required=True, choices=METHODS)
    j.add_argument("--p", required=True, help="p-values, comma-separated")
    j.add_argument("--alpha", type=float, default=0.05)
    fmt(j)

    w = sub.add_parser("power", help="sample size for a relative MDE")
    w.add_argument("--cv", type=float, required=True, help="coefficient of variation σ/μ")
    w.add_argument("--rel-mde", type=float, required=True, help="relative minimum detectable effect")
    w.add_argument("--alpha", type=float, default=0.05)
    w.add_argument("--power", type=float, default=0.8)
    w.add_argument("--cuped-rho", type=float, default=0.0, help="pre/post correlation for CUPED")
    w.add_argument("--split", type=float, default=0.5, help="treatment share of the experiment's units")
    w.add_argument("--daily-units", type=float, default=None, help="new units per day, to report days needed")
    fmt(w)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handlers = {"analyze": analyze, "srm": _srm, "adjust": _adjust, "power": _power}
    try:
        if hasattr(args, "alpha") and not 0.0 < args.alpha < 0.5:
            raise InputError(f"--alpha must be in (0, 0.5), got {args.alpha}")
        result = _clean(handlers[args.command](args))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:  # engine-side validation (margins, …)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        rows = _table(result)
        width = max(len(k) for k, _ in rows)
        print(f"{args.command}")
        for k, v in rows:
            print(f"  {k.ljust(width)}  {v}")
    return 0
