"""Sufficient statistics of an experiment, computed inside the database by ONE aggregate query.

The query joins the experiment's exposures (arm, legacy population, first-exposure day) with
each unit's metric rows summed over the window — and over the pre-period for the CUPED
covariate — and returns, per arm × population × first-exposure day, the sums every estimator
needs (DESIGN.md, "Analysis pushes work to the data")::

    n, Σy, Σy², Σx, Σx², Σxy                                   mean / proportion metrics
    Σnum, Σnum², Σden, Σden², Σnum·den (+ the pre-period terms)  ratio metrics

Column names are ``"<metric>__<field>"`` with the field names of the statistics engine's
dataclasses (``sum``, ``sum_squares``, ``x_sum`` …), so a row feeds ``from_row`` directly.

Numerical stability (DESIGN.md; experiments/stats/statistics.py explains the choice). Every sum
is of SHIFTED per-unit values: Σ(y − K), Σ(y − K)², Σ(y − K)³, Σ(x − Kx)(y − K), … where K is,
per per-unit variable, the value of ONE unit: a one-row CTE ``k`` (the experiment's smallest
unit id, found on the exposures' unique index, so the text is deterministic; its values come
from its own rollup row and rows, never from a second read of ``j``, which would make PostgreSQL
materialise ``j`` and drop the parallel plan) read by the final aggregate through a cross join. The
shift is returned in a ``"<metric>__shift"`` column (``x_shift``, ``num_shift``, ``den_shift``,
``pre_num_shift``, ``pre_den_shift``) of every row, so a row stays a self-contained sufficient
statistic. Any K inside the data's range keeps full precision (the rounding error of s² grows
with ((ȳ − K)/s)²); one unit's value is inside it by construction, costs no second aggregate,
and runs in every dialect. All rows of one query share K;
rows with different shifts (other queries, warehouse batches) are moved to a common K before
they are added (:func:`add_row`, exact algebra). Mean and proportion metrics also get
``sum_cubes`` = Σ(y − K)³, from which the engine reports each arm's skewness.

Rows are grouped by first-exposure day as well because units are disjoint across days, so the
per-day rows ADD: the warehouse path uploads exactly these rows and the analysis sums them the
same way (sufficient statistics of disjoint unit sets add; sums over days of one unit would not).

Crossover (sticky monotone ramps). One salt serves the whole ramp, so raising the treatment share
moves the control buckets ``[h+T_old, h+T_new)`` into treatment: a unit first exposed as control
may later be treated. Its exposure row keeps its first arm, so counting it as control would dilute
the comparison. Each exposure stores its bucket, and the query keeps only units whose arm never
changed from their first exposure to the latest allocation version (:func:`stable_ranges`): for
units first exposed under version v, treatment is kept when its bucket lies in every later
version's treatment range, control when it lies above every later version's treatment range.
Rows stay grouped by allocation version, because the kept share differs per version: the analysis
estimates per first-exposure version and pools them (experiments/analysis/__init__.py, "Crossover").

Conventions, documented for PMs and pinned by tests:
- A unit with an exposure but no metric rows counts as 0 for count (mean) metrics and for both
  parts of a ratio (contributing nothing to either sum); for a proportion its value is 0.
- A unit's value is the SUM of its per-day values over the window (MAX for proportions: "did it
  happen on any day"); the covariate is the same over the pre-period.
- Holdout units are excluded; only units first exposed on or before the as-of day count.

The SQL is portable: it runs unchanged on PostgreSQL and SQLite (``date()`` of a timestamp,
``CASE``, ``COALESCE``, string date literals), and a warehouse can run the exported text.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from experiments.metrics import metric_components
from experiments.stats.statistics import MOMENT_VARS, SHIFT_FIELDS, reshift

EXPOSURE_TABLE = "experiments_exposure"
WORK_MEM = os.environ.get("EXPERIMENTS_ANALYSIS_WORK_MEM", "1GB")
METRIC_TABLE = "experiments_metricobservation"
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")

MEAN_FIELDS = ("sum", "sum_squares", "sum_cubes", "shift")
COVARIATE_FIELDS = ("x_sum", "x_sum_squares", "xy_sum", "x_shift")
RATIO_FIELDS = (
    "num_sum",
    "num_sum_squares",
    "den_sum",
    "den_sum_squares",
    "num_den_sum",
    "num_shift",
    "den_shift",
)
RATIO_COVARIATE_FIELDS = (
    "pre_num_sum",
    "pre_num_sum_squares",
    "pre_den_sum",
    "pre_den_sum_squares",
    "pre_num_pre_den_sum",
    "num_pre_num_sum",
    "num_pre_den_sum",
    "den_pre_num_sum",
    "den_pre_den_sum",
    "pre_num_shift",
    "pre_den_shift",
)
# Columns an upload may leave out (SQL exported before the shifted sums): K = 0, no Σ(y − K)³.
OPTIONAL_FIELDS = frozenset(SHIFT_FIELDS.values()) | {"sum_cubes", "cap"}
# Columns that are the same in every row of one query (not sums): they do not add.
CONSTANT_FIELDS = frozenset(SHIFT_FIELDS.values()) | {"cap"}
CAP_SOURCES = ("control", "pre")
GROUP_FIELDS = ("arm", "population", "day", "allocation_version", "n")
BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class StableRange:
    """Buckets whose arm never changes after a first exposure under one allocation version.

    Treatment: ``[treatment_lo, treatment_hi)``; control: ``[control_lo, 10000)``.
    """

    treatment_lo: int
    treatment_hi: int
    control_lo: int

    @property
    def treatment_buckets(self) -> int:
        return max(0, self.treatment_hi - self.treatment_lo)

    @property
    def control_buckets(self) -> int:
        return max(0, BUCKETS - self.control_lo)

    @property
    def kept_share(self) -> float:
        """Share of a first-exposure cohort the analysis keeps (holdout and crossed units are not)."""
        return (self.treatment_buckets + self.control_buckets) / BUCKETS

    @property
    def treatment_share(self) -> float | None:
        """Expected treatment share of the kept units (what SRM tests against)."""
        kept = self.treatment_buckets + self.control_buckets
        return self.treatment_buckets / kept if kept else None


def stable_ranges(versions: Iterable[tuple[int, int, int]]) -> dict[int, StableRange]:
    """Per allocation version, the buckets whose arm is the same under it and every later version.

    ``versions``: (version, holdout_bp, treatment_bp) of one salt. Under version v a bucket b is
    treatment when ``h_v <= b < h_v + T_v``, control when ``b >= h_v + T_v`` (holdout below h_v,
    served like control and never analysed). A unit first exposed under v is unaffected by the
    ramp when its bucket is treatment (or control) under every version v' >= v, i.e. it lies in
    ``[max h, min (h+T))`` (or ``[max (h+T), 10000)``) over those versions.
    """
    ordered = sorted((int(v), int(h), int(t)) for v, h, t in versions)
    out: dict[int, StableRange] = {}
    lo = 0
    hi = BUCKETS
    c_lo = 0
    for version, holdout, treatment in reversed(ordered):
        lo = max(lo, holdout)
        hi = min(hi, holdout + treatment)
        c_lo = max(c_lo, min(BUCKETS, holdout + treatment))
        out[version] = StableRange(lo, max(lo, hi), c_lo)
    return out


@dataclass(frozen=True, slots=True)
class AggregateMetric:
    """What the query needs to know about one analysed metric."""

    key: str
    kind: str  # mean | proportion | ratio (quantiles are not additive: not in this query)
    numerator: str = ""
    denominator: str = ""
    cuped: bool = False
    # Pre-registered capping (mean metrics): winsorise every unit's value (and its covariate) at
    # this quantile of the control arm's values, or of all units' pre-period values ("pre").
    cap_quantile: float | None = None
    cap_source: str = "control"  # control | pre

    @property
    def capped(self) -> bool:
        return self.cap_quantile is not None and self.kind == "mean"

    def fields(self) -> tuple[str, ...]:
        """The sufficient-statistic columns this metric gets (besides the shared ``n``)."""
        if self.kind == "ratio":
            return RATIO_FIELDS + (RATIO_COVARIATE_FIELDS if self.cuped else ())
        return MEAN_FIELDS + (COVARIATE_FIELDS if self.cuped else ()) + (("cap",) if self.capped else ())


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    """The experiment slice the query aggregates: (surface, salt, window) + pre-period."""

    surface_id: int
    salt: str
    window_start: dt.date
    window_end: dt.date
    metrics: tuple[AggregateMetric, ...]
    pre_start: dt.date | None = None
    pre_end: dt.date | None = None
    # Keep only units whose arm never changed (see "Crossover"); None keeps every exposure.
    stable: Mapping[int, StableRange] | None = None
    exposure_table: str = EXPOSURE_TABLE
    metric_table: str = METRIC_TABLE

    @property
    def has_pre(self) -> bool:
        return (
            self.pre_start is not None
            and self.pre_end is not None
            and any(m.cuped or (m.capped and m.cap_source == "pre") for m in self.metrics)
        )


COUNTER_TABLE = "experiments_metricdaywrite"


@dataclass(frozen=True, slots=True)
class RollupUse:
    """A per-unit rollup the query reads instead of the metric rows of the days it has folded.

    ``folded`` holds each folded day with the number of transactions that had written its rows
    when it was folded (experiments/rollups.py, which hands one out only while every one of those
    numbers is unchanged).
    """

    table: str
    folded: tuple[tuple[dt.date, int], ...]


@dataclass
class _Columns:
    """Per-unit pivot columns, deduplicated: (base key, period, agg) → column name."""

    names: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def get(self, key: str, period: str, agg: str) -> str:
        ident = (key, period, agg)
        if ident not in self.names:
            self.names[ident] = f"c{len(self.names)}"
        return self.names[ident]


def _quote_alias(name: str) -> str:
    # Metric keys are validated slugs; double quotes make "a-b__sum" a legal column alias.
    return '"' + name.replace('"', "") + '"'


def _check_table(name: str) -> str:
    if not _IDENT_RE.match(name):
        raise ValueError(f"{name!r} is not a plain table name")
    return name


def stable_filter(stable: Mapping[int, StableRange] | None, alias: str = "e") -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) keeping exposures whose arm never changed.

    Versions with identical ranges share one clause; exposures without a stored bucket, or under
    a version the control plane does not know, are kept as first exposed.
    """
    if not stable:
        return "", []
    groups: dict[StableRange, list[int]] = {}
    for version, rng in sorted(stable.items()):
        groups.setdefault(rng, []).append(version)
    clauses = [f"{alias}.bucket IS NULL"]
    params: list[Any] = []
    for rng, versions in groups.items():
        marks = ", ".join(["%s"] * len(versions))
        clauses.append(
            f"({alias}.allocation_version IN ({marks}) AND (({alias}.arm = 'treatment' AND {alias}.bucket >= %s "
            f"AND {alias}.bucket < %s) OR ({alias}.arm = 'control' AND {alias}.bucket >= %s)))"
        )
        params += [*versions, rng.treatment_lo, rng.treatment_hi, rng.control_lo]
    known = sorted(stable)
    clauses.append(f"{alias}.allocation_version NOT IN ({', '.join(['%s'] * len(known))})")
    params += known
    return "\n    AND (" + "\n      OR ".join(clauses) + ")", params


def pivot_columns(
    spec: AggregateSpec,
) -> tuple[dict[tuple[str, str, str], str], dict[str, str], list[tuple[str, str]]]:
    """The per-unit pivot columns, per-unit expressions and output aggregates of a spec.

    Returns ((key, period, agg) → pivot column, per-unit alias → SQL over ``p``-columns written
    as ``{cN}`` placeholders, [(output alias, SQL aggregate over ``j``)]). Deterministic in the
    order of ``spec.metrics``: the rollup tables (experiments/rollups.py) name their columns
    with it, so a rollup built for a design reads back under the same names.
    """
    if not spec.metrics:
        raise ValueError("no additive metrics to aggregate")
    columns = _Columns()
    has_pre = spec.has_pre

    def unit_value(expression: str, period: str, agg: str) -> str:
        """SQL for a unit's value of ``expression`` (keys joined by +) in ``period``."""
        parts = ["{" + columns.get(k, period, agg) + "}" for k in metric_components(expression)]
        return parts[0] if len(parts) == 1 else "(" + " + ".join(parts) + ")"

    outputs: list[tuple[str, str]] = []  # (alias, SQL aggregate over joined rows)
    joined_exprs: dict[str, str] = {}

    def per_unit(name: str, expression: str) -> str:
        joined_exprs.setdefault(name, expression)
        return name

    cap_alias = ""  # the capped metric's one-row CTE (see cap_ctes), "" when not capped

    # ``j`` holds, per per-unit variable, the shifted value ``v_…`` = value − K (build_query); a
    # capped metric's ``v_…`` stays raw, to be capped here first. ``k`` holds K.
    def value(which: str, name: str) -> str:
        col = f"{which}.{_alias_col(name)}"
        if not cap_alias:
            return col
        # Winsorised at the pre-registered cap (portable CASE, not LEAST: SQLite lacks it).
        return f"CASE WHEN {col} > {cap_alias}.cap THEN {cap_alias}.cap ELSE {col} END"

    def shifted(name: str) -> str:
        if not cap_alias:
            return f"(j.{_alias_col(name)})"
        return f"({value('j', name)} - {value('k', name)})"

    for index, m in enumerate(spec.metrics):
        cap_alias = _cap_alias(index) if m.capped else ""
        if m.capped and m.cap_source == "pre" and has_pre:
            per_unit(f"{m.key}:x", unit_value(m.key, "p", "sum"))
        cuped = m.cuped and has_pre
        pairs: list[tuple[str, str | None, str | None]]
        if m.kind == "ratio":
            num = per_unit(f"{m.key}:num", unit_value(m.numerator, "w", "sum"))
            den = per_unit(f"{m.key}:den", unit_value(m.denominator, "w", "sum"))
            pairs = [
                ("num_sum", num, None),
                ("num_sum_squares", num, num),
                ("den_sum", den, None),
            ]
            pairs += [("den_sum_squares", den, den), ("num_den_sum", num, den)]
            pairs += [("num_shift", num, "shift"), ("den_shift", den, "shift")]
            if cuped:
                pn = per_unit(f"{m.key}:pre_num", unit_value(m.numerator, "p", "sum"))
                pd = per_unit(f"{m.key}:pre_den", unit_value(m.denominator, "p", "sum"))
                pairs += [
                    ("pre_num_sum", pn, None),
                    ("pre_num_sum_squares", pn, pn),
                    ("pre_den_sum", pd, None),
                    ("pre_den_sum_squares", pd, pd),
                    ("pre_num_pre_den_sum", pn, pd),
                    ("num_pre_num_sum", num, pn),
                    ("num_pre_den_sum", num, pd),
                    ("den_pre_num_sum", den, pn),
                    ("den_pre_den_sum", den, pd),
                    ("pre_num_shift", pn, "shift"),
                    ("pre_den_shift", pd, "shift"),
                ]
            elif m.cuped:
                pairs += [(f, None, None) for f in RATIO_COVARIATE_FIELDS]
        else:
            agg = "max" if m.kind == "proportion" else "sum"
            if m.kind == "proportion" and len(metric_components(m.key)) != 1:
                raise ValueError(f"proportion metric {m.key} must be one ingested key")
            y = per_unit(f"{m.key}:y", unit_value(m.key, "w", agg))
            pairs = [("sum", y, None), ("sum_squares", y, y), ("sum_cubes", y, "cube"), ("shift", y, "shift")]
            if cuped:
                x = per_unit(f"{m.key}:x", unit_value(m.key, "p", agg))
                pairs += [
                    ("x_sum", x, None),
                    ("x_sum_squares", x, x),
                    ("xy_sum", x, y),
                    ("x_shift", x, "shift"),
                ]
            elif m.cuped:
                pairs += [(f, None, None) for f in COVARIATE_FIELDS]
        if cap_alias:
            outputs.append((_quote_alias(f"{m.key}__cap"), f"{OUTER}{cap_alias}.cap"))
        for fname, a, b in pairs:
            alias = _quote_alias(f"{m.key}__{fname}")
            if a is None:
                # CUPED asked for but no pre-period: the covariate is identically 0 (θ = 0).
                outputs.append((alias, "0.0"))
            elif b is None:
                outputs.append((alias, f"SUM{shifted(a)}"))
            elif b == "shift":
                # K, the same in every row of the query: selected around the group sums.
                outputs.append((alias, OUTER + value("k", a)))
            elif b == "cube":
                outputs.append((alias, f"SUM({shifted(a)} * {shifted(a)} * {shifted(a)})"))
            else:
                outputs.append((alias, f"SUM({shifted(a)} * {shifted(b)})"))
    return dict(columns.names), joined_exprs, outputs


def _cap_alias(index: int) -> str:
    return f"cap{index}"


# Marks an output of ``pivot_columns`` that is not a group sum but a per-query constant (a shift
# K or a cap), selected around the grouped sums (build_query).
OUTER = "@outer:"


def capped_names(spec: AggregateSpec) -> set[str]:
    """Per-unit variables of capped metrics: ``j`` keeps them raw (capped, then shifted, at the end)."""
    return {f"{m.key}:{v}" for m in spec.metrics if m.capped for v in ("y", "x")}


def cap_ctes(spec: AggregateSpec) -> list[tuple[str, str]]:
    """One-row CTEs ``capN(cap)``: each capped metric's pre-registered cap, computed in SQL.

    The cap is the ``cap_quantile`` of the per-unit values in ``j`` — the control arm's window
    values (``control``), or every unit's pre-period values (``pre``; the control arm when the
    design has no pre-period) — as ``percentile_disc``: the smallest value whose rank reaches
    q·count. Window functions, so it runs on PostgreSQL, SQLite ≥ 3.25 and the warehouses; no
    units: the cap is NULL and nothing is capped.
    """
    out = []
    for index, m in enumerate(spec.metrics):
        if not m.capped:
            continue
        q = float(m.cap_quantile)  # type: ignore[arg-type]
        if not 0.0 < q < 1.0:
            raise ValueError(f"cap_quantile of {m.key} must be in (0, 1), got {q}")
        if m.cap_source == "pre" and spec.has_pre:
            col, where = _alias_col(f"{m.key}:x"), ""
        else:
            col, where = _alias_col(f"{m.key}:y"), " WHERE j.arm = 'control'"
        out.append(
            (
                _cap_alias(index),
                "SELECT MIN(s.v) AS cap FROM (\n"
                f"    SELECT j.{col} AS v, ROW_NUMBER() OVER (ORDER BY j.{col}) AS rn, COUNT(*) OVER () AS cnt\n"
                f"    FROM j{where}\n"
                f"  ) s WHERE s.rn >= {q!r} * s.cnt",
            )
        )
    return out


def _periods(spec: AggregateSpec) -> tuple[tuple[str, str], tuple[str, str] | None]:
    window = (spec.window_start.isoformat(), spec.window_end.isoformat())
    pre = (
        (spec.pre_start.isoformat(), spec.pre_end.isoformat())
        if spec.has_pre and spec.pre_start and spec.pre_end
        else None
    )
    return window, pre


def _pivot_select(
    spec: AggregateSpec, names: Mapping[tuple[str, str, str], str], day_condition: str, alias: str = "m"
) -> tuple[str, list[Any]]:
    """``SELECT unit_id, <one conditional aggregate per pivot column> … GROUP BY unit_id``.

    ``day_condition`` further restricts the rows read (SQL over ``m.day``, no parameters).
    """
    window, pre = _periods(spec)
    pivot_sql: list[str] = []
    params: list[Any] = []
    for (key, period, agg), col in names.items():
        lo, hi = window if period == "w" else pre  # type: ignore[misc]
        fn = "MAX" if agg == "max" else "SUM"
        pivot_sql.append(
            f"{fn}(CASE WHEN {alias}.metric = %s AND {alias}.day >= %s AND {alias}.day <= %s "
            f"THEN {alias}.value END) AS {col}"
        )
        params += [key, lo, hi]
    keys = sorted({k for (k, _p, _a) in names})
    day_lo = min(window[0], pre[0]) if pre else window[0]
    day_hi = max(window[1], pre[1]) if pre else window[1]
    sql = (
        f"SELECT {alias}.unit_id,\n    " + ",\n    ".join(pivot_sql) + "\n"
        f"  FROM {_check_table(spec.metric_table)} {alias}\n"
        f"  WHERE {alias}.surface_id = %s AND {alias}.metric IN ({', '.join(['%s'] * len(keys))})\n"
        f"    AND {alias}.day >= %s AND {alias}.day <= %s{day_condition}\n"
        f"  GROUP BY {alias}.unit_id"
    )
    return sql, [*params, spec.surface_id, *keys, day_lo, day_hi]


def _day_intervals(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Sorted days as maximal runs of consecutive days: [(first, last), …]."""
    runs: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if runs and day == runs[-1][1] + dt.timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _days_between(lo: str, hi: str) -> list[dt.date]:
    first, last = dt.date.fromisoformat(lo), dt.date.fromisoformat(hi)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _days_sql(days: Iterable[dt.date], alias: str = "m") -> str:
    """SQL selecting rows whose day is one of ``days``, as ranges of consecutive days (FALSE: none)."""
    runs = _day_intervals(days)
    if not runs:
        return "FALSE"
    ranges = " OR ".join(
        f"{alias}.day BETWEEN '{lo.isoformat()}' AND '{hi.isoformat()}'"
        if lo != hi
        else f"{alias}.day = '{lo.isoformat()}'"
        for lo, hi in runs
    )
    return f"({ranges})"


def build_query(
    spec: AggregateSpec, rollup: RollupUse | None = None, *, materialize: bool = False
) -> tuple[str, list[Any]]:
    """The aggregate query as (SQL with %s placeholders, parameters), for Django's cursor.

    With ``rollup`` (PostgreSQL, experiments/rollups.py, which checked that its folded days are
    unchanged) each unit's values are its rollup row's plus a pivot of the rows of the days the
    rollup has not folded. Without it the query is portable SQL over the rows alone.

    ``materialize`` (PostgreSQL, ``run_query``) writes ``j AS MATERIALIZED``: each unit's shifted
    values are then computed once, where an inlined ``j`` repeats the subtraction in every sum
    that reads it (measured 2× slower through a rollup, bench/readout.py). The exported text
    leaves it out (not every warehouse dialect has the hint).
    """
    names, joined_exprs, outputs = pivot_columns(spec)
    window, pre = _periods(spec)
    exposure_table = _check_table(spec.exposure_table)
    stable_sql, stable_params = stable_filter(spec.stable)

    # With a rollup: the days the query reads that it has not folded, as ranges. With none left
    # (every day closed and folded) the metric table is not read at all.
    unfolded: set[dt.date] = set()
    if rollup is not None:
        wanted = set(_days_between(*window)) | (set(_days_between(*pre)) if pre else set())
        unfolded = wanted - {d for d, _ in rollup.folded}
    sources = [] if rollup is None else ["r"]
    if rollup is None or unfolded:
        sources.append("p")

    agg_of = {col: agg for (_k, _p, agg), col in names.items()}

    def column(col: str, p: str = "p", r: str = "r") -> str:
        """A unit's value of one pivot column: the rollup's plus the rows' (0 when neither has it)."""
        if len(sources) == 1:
            return f"COALESCE({p if sources[0] == 'p' else r}.{col}, 0)"
        if agg_of[col] == "max":
            return f"COALESCE(GREATEST({p}.{col}, {r}.{col}), 0)"
        return f"(COALESCE({p}.{col}, 0) + COALESCE({r}.{col}, 0))"

    joined = {
        name: expr.format_map({c: column(c) for c in names.values()}) for name, expr in joined_exprs.items()
    }
    # The same per-unit values for the one unit that gives the shifts K (aliases pk, rk).
    joined_k = {
        name: expr.format_map({c: column(c, "pk", "rk") for c in names.values()})
        for name, expr in joined_exprs.items()
    }
    params: list[Any] = [spec.surface_id, spec.salt, window[1], *stable_params]
    # Per-unit pivot first (one hash aggregate over the metric rows), then a join to the
    # exposures and the group sums. On PostgreSQL ``run_query`` disables nested loops for the
    # transaction: on never-analysed tables the planner's one-row estimates would otherwise pick a
    # nested loop over the aggregate, quadratic in units.
    sql = (
        "WITH units AS (\n"
        "  SELECT e.unit_id, e.arm, e.population, e.allocation_version, date(e.first_exposed_at) AS day\n"
        f"  FROM {exposure_table} e\n"
        "  WHERE e.surface_id = %s AND e.salt = %s AND e.arm IN ('control', 'treatment')\n"
        "    AND date(e.first_exposed_at) <= %s" + stable_sql + "\n"
        "),\n"
    )
    if rollup is None:
        pivot, pivot_params = _pivot_select(spec, names, "")
        sql += "p AS (\n  " + pivot + "\n),\n"
        params += pivot_params
        source = "FROM units u LEFT JOIN p ON p.unit_id = u.unit_id"
    else:
        source = f"FROM units u LEFT JOIN {_check_table(rollup.table)} r ON r.unit_id = u.unit_id"
        if unfolded:
            pivot, pivot_params = _pivot_select(spec, names, " AND " + _days_sql(unfolded))
            sql += "p AS (\n  " + pivot + "\n),\n"
            params += pivot_params
            source += " LEFT JOIN p ON p.unit_id = u.unit_id"
    caps = cap_ctes(spec)
    raw = capped_names(spec)
    # The shifts K: every per-unit value of ONE unit, the experiment's smallest unit id (found on
    # the exposures' unique index): its rollup row (a primary-key lookup) plus its row in ``p``.
    one_unit = (
        f"(SELECT MIN(e1.unit_id) FROM {exposure_table} e1 "
        "WHERE e1.surface_id = %s AND e1.salt = %s AND e1.arm IN ('control', 'treatment'))"
    )
    k_source = f"FROM (SELECT {one_unit} AS unit_id) one"
    params += [spec.surface_id, spec.salt]
    if "r" in sources:
        k_source += f" LEFT JOIN {_check_table(rollup.table)} rk ON rk.unit_id = one.unit_id"  # type: ignore[union-attr]
    if "p" in sources:
        # The unit's unfolded rows from the pivot ``p`` itself (a second scan of the rows for one
        # unit would cost as much as the first: there is no index by unit).
        k_source += " LEFT JOIN p pk ON pk.unit_id = one.unit_id"
    sql += (
        "k AS (\n  SELECT "
        + ", ".join(f"{expr} AS {_alias_col(name)}" for name, expr in joined_k.items())
        + f"\n  {k_source}\n),\n"
    )
    # Per unit: the shifted values (one subtraction per variable, so the group sums below are as
    # cheap as raw ones); K itself is selected once, around the grouped sums.
    columns_j = []
    for name, expr in joined.items():
        col = _alias_col(name)
        columns_j.append(f"{expr} AS {col}" if name in raw else f"{expr} - k.{col} AS {col}")
    sums = [(alias, agg) for alias, agg in outputs if not agg.startswith(OUTER)]
    constants = [(alias, agg.removeprefix(OUTER)) for alias, agg in outputs if agg.startswith(OUTER)]
    cross = " CROSS JOIN k" + "".join(f" CROSS JOIN {alias}" for alias, _ in caps)
    sql += (
        f"j AS {'MATERIALIZED ' if materialize else ''}(\n"
        "  SELECT u.arm, u.population, u.day, u.allocation_version,\n    " + ",\n    ".join(columns_j) + "\n"
        f"  {source} CROSS JOIN k\n"
        ")"
        + "".join(f",\n{alias} AS (\n  {body}\n)" for alias, body in caps)
        + "\nSELECT g.*,\n  "
        + ",\n  ".join(f"{expr} AS {alias}" for alias, expr in constants)
        + "\nFROM (\n"
        "SELECT j.arm, j.population, j.day, j.allocation_version, COUNT(*) AS n,\n  "
        + ",\n  ".join(f"{agg} AS {alias}" for alias, agg in sums)
        + f"\nFROM j{cross}"
        + "\nGROUP BY j.arm, j.population, j.day, j.allocation_version\n"
        f") g{cross}\n"
        "ORDER BY g.arm, g.population, g.day, g.allocation_version"
    )
    return sql, params


def build_fold(
    spec: AggregateSpec, table: str, days: Sequence[dt.date], *, incremental: bool
) -> tuple[str, list[Any]]:
    """Fold the metric rows of ``days`` into a rollup table: one row per unit, one column per pivot.

    ``spec`` is the experiment's design with ``window_end`` at the last day the rollup may hold;
    an incremental fold adds into existing rows (SUM columns add, MAX columns take the larger).
    """
    names, _joined, _outputs = pivot_columns(spec)
    select, params = _pivot_select(spec, names, " AND " + _days_sql(days))
    cols = list(names.values())
    target = _check_table(table)
    sql = f"INSERT INTO {target} (unit_id, {', '.join(cols)})\n{select}"
    if incremental:
        sets = []
        for (_k, _p, agg), col in names.items():
            if agg == "max":
                sets.append(f"{col} = GREATEST({target}.{col}, EXCLUDED.{col})")
            else:
                sets.append(
                    f"{col} = COALESCE({target}.{col} + EXCLUDED.{col}, {target}.{col}, EXCLUDED.{col})"
                )
        sql += "\nON CONFLICT (unit_id) DO UPDATE SET " + ", ".join(sets)
    return sql, params


def _alias_col(name: str) -> str:
    # "likes:y" → likes_y; metric keys may hold '-', which is not legal in a bare identifier.
    return "v_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are not expected in the aggregate query")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite literal")
        return repr(value)
    if isinstance(value, dt.date | str):
        text = value.isoformat() if isinstance(value, dt.date) else value
        return "'" + text.replace("'", "''") + "'"
    raise TypeError(f"cannot render {type(value).__name__} as a SQL literal")


def render_sql(sql: str, params: Sequence[Any]) -> str:
    """Inline parameters as SQL literals: the plain SQL text a warehouse runs.

    Only ints, finite floats, dates and strings occur (validated slugs, ISO dates, the salt);
    strings are quoted with '' escaping, the SQL standard, so the text is safe to run.
    """
    pieces = sql.split("%s")
    if len(pieces) - 1 != len(params):
        raise ValueError(f"{len(pieces) - 1} placeholders but {len(params)} parameters")
    out = [pieces[0]]
    for value, piece in zip(params, pieces[1:], strict=True):
        out += [_literal(value), piece]
    return "".join(out)


def run_query(spec: AggregateSpec, connection: Any, rollup: RollupUse | None = None) -> list[dict[str, Any]]:
    """Execute the aggregate query on a Django connection; rows as dicts (day as ISO text)."""
    sql, params = build_query(spec, rollup, materialize=connection.vendor == "postgresql")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and not connection.get_autocommit():
            # Transaction-local planner settings for this analytic query (measured, bench/readout.py):
            # JIT compilation of its ~30 conditional aggregates costs more than it saves (11.7 s of
            # a 17.8 s query at 200k units); the per-unit hash aggregate needs far more than the
            # default 4 MB work_mem to stay in memory (1M units: ~650 MB per parallel worker); and
            # a nested loop is never right here (both sides are full scans), while one-row
            # estimates on never-analysed tables would choose it.
            cursor.execute(
                "SELECT set_config('jit', 'off', true), set_config('work_mem', %s, true), "
                "set_config('enable_nestloop', 'off', true)",
                [WORK_MEM],
            )
        cursor.execute(sql, params)
        names = [c[0] for c in cursor.description]
        rows = cursor.fetchall()
    return [normalise_row(dict(zip(names, row, strict=True))) for row in rows]


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical JSON-ready form of one result row (as the database or a warehouse returns it)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("arm", "population"):
            out[key] = str(value)
        elif key == "day":
            out[key] = value.isoformat() if isinstance(value, dt.date) else str(value)[:10]
        elif key in ("n", "allocation_version"):
            out[key] = int(value)
        else:
            out[key] = float(value) if value is not None else 0.0
    return out


def validate_rows(
    rows: Iterable[Mapping[str, Any]], metrics: Sequence[AggregateMetric]
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Check uploaded warehouse rows: every group column and every metric's columns, as numbers.

    Returns (normalised rows, errors by ``rows[i].column``). One bad row rejects the upload:
    a partial set of sufficient statistics would silently bias every estimate.
    """
    errors: dict[str, list[str]] = {}
    clean: list[dict[str, Any]] = []
    needed = [f"{m.key}__{f}" for m in metrics for f in m.fields() if f not in OPTIONAL_FIELDS]
    optional = [f"{m.key}__{f}" for m in metrics for f in m.fields() if f in OPTIONAL_FIELDS]
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.setdefault(f"rows[{i}]", []).append("must be an object")
            continue
        for name in GROUP_FIELDS:
            if name not in row:
                errors.setdefault(f"rows[{i}].{name}", []).append("is required")
        if row.get("arm") not in ("control", "treatment"):
            errors.setdefault(f"rows[{i}].arm", []).append("must be control or treatment")
        try:
            dt.date.fromisoformat(str(row.get("day", ""))[:10])
        except ValueError:
            errors.setdefault(f"rows[{i}].day", []).append("must be an ISO date")
        for name in ("n", "allocation_version"):
            value = row.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                errors.setdefault(f"rows[{i}].{name}", []).append("must be a non-negative integer")
        present = [c for c in optional if c in row]
        for col in (*needed, *present):
            value = row.get(col)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                errors.setdefault(f"rows[{i}].{col}", []).append("must be a finite number")
        if not any(k.startswith(f"rows[{i}]") for k in errors):
            clean.append(normalise_row({k: row[k] for k in (*GROUP_FIELDS, *needed, *present)}))
    return clean, errors


_GROUP_KEYS = frozenset(("arm", "population", "day", "allocation_version"))


def add_row(bucket: dict[str, Any], row: Mapping[str, Any]) -> None:
    """Add one row of sufficient statistics into ``bucket`` (disjoint units: sums add).

    ``n`` and every ``<metric>__<sum>`` column add; ``<metric>__<shift>`` columns are not sums:
    the bucket keeps its first row's K, and a row with another K has its sums moved to the
    bucket's K first (``experiments.stats.reshift``). A ``sum_cubes`` missing from either side
    makes the total unknown (``None``).
    """
    if not bucket:
        bucket.update({k: v for k, v in row.items() if k not in _GROUP_KEYS})
        return
    n_row = row.get("n", 0)
    by_metric: dict[str, dict[str, Any]] = {}
    for key, value in row.items():
        if key in _GROUP_KEYS or key == "n":
            continue
        prefix, _, name = key.rpartition("__")
        by_metric.setdefault(prefix, {})[name] = value
    for prefix, cols in by_metric.items():
        shifts_row = {v: float(cols.get(f, 0.0)) for v, f in SHIFT_FIELDS.items() if f in cols}
        shifts_bucket = {v: float(bucket.get(f"{prefix}__{SHIFT_FIELDS[v]}", 0.0)) for v in shifts_row}
        sums = {name: value for name, value in cols.items() if name not in CONSTANT_FIELDS}
        if shifts_row != shifts_bucket and all(name in MOMENT_VARS for name in sums):
            sums = reshift(n_row, sums, shifts_row, shifts_bucket)
        for name, value in sums.items():
            key = f"{prefix}__{name}"
            old = bucket.get(key, 0.0) if key in bucket or name != "sum_cubes" else None
            bucket[key] = None if old is None or value is None else old + value
        for name in cols:
            if name in CONSTANT_FIELDS:
                bucket.setdefault(f"{prefix}__{name}", cols[name])
    bucket["n"] = bucket.get("n", 0) + n_row


def sum_rows(
    rows: Iterable[Mapping[str, Any]], *, until: str | None = None
) -> dict[tuple[str, str], dict[str, float]]:
    """Add per-day rows into per (arm, population) totals (disjoint units: sums add, see add_row)."""
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        if until is not None and str(row["day"]) > until:
            continue
        add_row(totals.setdefault((str(row["arm"]), str(row["population"])), {}), row)
    return totals


def metric_row(totals: Mapping[str, Any], metric: AggregateMetric) -> dict[str, Any]:
    """The ``from_row`` mapping of one metric: shared n + its prefixed columns.

    A missing shift is 0 (raw sums); a missing ``sum_cubes`` or ``cap`` is ``None``.
    """
    prefix = f"{metric.key}__"
    out: dict[str, Any] = {"n": int(totals.get("n", 0))}
    for name in metric.fields():
        value = totals.get(prefix + name)
        if name in ("sum_cubes", "cap"):
            out[name] = None if value is None else float(value)
        else:
            out[name] = float(value) if value is not None else 0.0
    return out
