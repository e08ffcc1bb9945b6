"""Assignment library: determinism, monotone ramps, holdout, populations, balance, independence."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from controlplane.core.assignment import (
    ARM_HOLDOUT,
    ARM_TREATMENT,
    BUCKETS,
    AllocationConfig,
    AssignmentError,
    PopulationShare,
    bucket,
    buckets,
    unit_key,
)

POPS = (
    PopulationShare("content_first", "content-first@1", 6000),
    PopulationShare("interest_first", "interest-first@1", 4000),
)


def config(treatment_bp: int = 500, holdout_bp: int = 100, salt: str = "groups-1") -> AllocationConfig:
    return AllocationConfig(
        surface="groups",
        version=1,
        salt=salt,
        populations=POPS,
        holdout_bp=holdout_bp,
        treatment_bp=treatment_bp,
        treatment_stack="unified-mtl@1",
    )


unit_ids = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.text(
        alphabet=st.characters(
            min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc", "Cf")
        ),
        min_size=1,
        max_size=40,
    ).filter(lambda s: s.isprintable() and s == s.strip()),
)


@given(unit_ids, st.text(min_size=1, max_size=20))
def test_bucket_is_deterministic_and_in_range(unit_id, salt):
    assert bucket(salt, unit_id) == bucket(salt, unit_id)
    assert 0 <= bucket(salt, unit_id) < BUCKETS


@given(
    st.lists(st.integers(min_value=0, max_value=2**63 - 1), min_size=1, max_size=200),
    st.text(min_size=1, max_size=20),
)
def test_bulk_matches_scalar(ids, salt):
    assert buckets(salt, np.array(ids, dtype=np.int64)).tolist() == [bucket(salt, i) for i in ids]


@given(st.integers(min_value=0, max_value=10**12))
def test_decimal_string_and_int_ids_are_the_same_unit(n):
    assert unit_key(str(n)) == unit_key(n)
    assert bucket("s", str(n)) == bucket("s", n)


@given(st.integers(min_value=0, max_value=9900), st.integers(min_value=0, max_value=9900), unit_ids)
def test_ramps_are_monotone_and_holdout_never_treated(low, high, unit_id):
    low, high = sorted((low, high))
    before, after = config(low, holdout_bp=100).assign(unit_id), config(high, holdout_bp=100).assign(unit_id)
    if before.treated:
        assert after.treated, "raising the share moved a treated unit out"
    assert before.population == after.population
    if before.arm == "holdout":
        assert after.arm == "holdout" and not after.treated
    full = config(10000 - 100, holdout_bp=100).assign(unit_id)
    assert full.arm in {"holdout", "treatment"}


def test_bulk_arms_match_scalar_and_monotone():
    ids = np.arange(0, 200_000, dtype=np.int64)
    arms_5, pops_5 = config(500).assign_many(ids)
    arms_25, pops_25 = config(2500).assign_many(ids)
    assert np.all(arms_25[arms_5 == ARM_TREATMENT] == ARM_TREATMENT)
    assert np.array_equal(pops_5, pops_25)
    assert not np.any((arms_25 == ARM_TREATMENT) & (arms_5 == ARM_HOLDOUT))
    sample = ids[::997]
    names = ["holdout", "control", "treatment"]
    for i in sample:
        a = config(500).assign(int(i))
        assert names[arms_5[i]] == a.arm
        assert POPS[pops_5[i]].population == a.population
    # Shares land where configured (binomial 5-sigma bounds).
    for arms, bp in ((arms_5, 500), (arms_25, 2500)):
        p, n = bp / BUCKETS, len(ids)
        assert abs((arms == ARM_TREATMENT).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert abs((pops_5 == 1).mean() - 0.4) < 5 * np.sqrt(0.24 / len(ids))


def test_balance_chi_square_over_one_million_ids():
    b = buckets("balance-salt", np.arange(1_000_000, dtype=np.int64))
    counts = np.bincount(b, minlength=BUCKETS)
    # Uniform over 10000 buckets: Pearson χ², df = 9999.
    result = scipy.stats.chisquare(counts)
    assert result.pvalue > 1e-4, result
    # Text ids too (hashed through BLAKE2b).
    text = np.array([bucket("balance-salt", f"user-{i}") for i in range(100_000)])
    assert scipy.stats.chisquare(np.bincount(text % 100, minlength=100)).pvalue > 1e-4


def test_independence_across_salts():
    ids = np.arange(500_000, dtype=np.int64)
    a = buckets("experiment-a", ids) < 5000
    b = buckets("experiment-b", ids) < 5000
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    _chi2, p, _, _ = scipy.stats.chi2_contingency(table, correction=False)
    assert p > 1e-4, table
    # Finer: deciles of one salt against deciles of the other.
    da, db = buckets("experiment-a", ids) // 1000, buckets("experiment-b", ids) // 1000
    joint = np.zeros((10, 10))
    np.add.at(joint, (da, db), 1)
    assert scipy.stats.chi2_contingency(joint)[1] > 1e-4


def test_population_does_not_depend_on_experiment_salt():
    ids = np.arange(50_000, dtype=np.int64)
    _, pops_a = config(salt="a").assign_many(ids)
    _, pops_b = config(salt="b").assign_many(ids)
    assert np.array_equal(pops_a, pops_b)


@pytest.mark.parametrize("bad", ["", " padded ", "x" * 129, "tab\there", -1, 2**64, True, 1.5, None])
def test_malformed_unit_ids_are_refused(bad):
    with pytest.raises(AssignmentError):
        bucket("s", bad)


def test_invalid_configs_name_the_field():
    with pytest.raises(AssignmentError, match="treatment_bp"):
        config(treatment_bp=9950, holdout_bp=100)
    with pytest.raises(AssignmentError, match="populations"):
        AllocationConfig(surface="s", version=1, salt="x", populations=(PopulationShare("a", "s@1", 5000),))
    with pytest.raises(AssignmentError, match="treatment_stack"):
        AllocationConfig(
            surface="s",
            version=1,
            salt="x",
            populations=POPS[:1] and (PopulationShare("a", "s@1", 10000),),
            treatment_bp=10,
        )


def test_round_trip_through_published_dict():
    c = config(2500)
    again = AllocationConfig.from_dict(c.to_dict())
    assert again == c
    assert [again.assign(i) for i in range(100)] == [c.assign(i) for i in range(100)]
    with pytest.raises(AssignmentError, match="malformed"):
        AllocationConfig.from_dict({"surface": "x"})


def test_live_shares_add_to_one():
    shares = config(2500, holdout_bp=100).live_shares()
    assert shares["unified-mtl@1"] == pytest.approx(0.25)
    assert shares["content-first@1"] == pytest.approx(0.75 * 0.6)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_assignment_imports_without_django():
    code = "import sys, controlplane.core.assignment; assert 'django' not in sys.modules, 'django loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
