"""Tests of scoring.py: the bootstrap interval over seeds, and the comparison's statistics
(probability of improvement, mean and IQM of normalised scores, stratified intervals, the
performance profile, the table as Markdown and CSV)."""

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from helpers import ROOT, fake_values
from hypothesis import given, settings
from hypothesis import strategies as st

import scoring
from training import provenance


def test_bootstrap_ci_contains_the_mean():
    values = fake_values(20, 8, seed=1)
    mean, low, high = scoring.bootstrap_ci(values)
    np.testing.assert_allclose(mean, values.mean(axis=1))
    assert np.all(low < mean) and np.all(mean < high)


def test_bootstrap_ci_shrinks_as_seeds_grow():
    rng = np.random.default_rng(2)
    widths = []
    for num_seeds in (4, 30, 300):
        values = rng.normal(0, 1, size=(50, num_seeds))
        _, low, high = scoring.bootstrap_ci(values)
        widths.append(np.mean(high - low))
    assert widths[0] > widths[1] > widths[2] > 0
    # ~ 2 * 1.96 / sqrt(S) for unit-variance seeds
    assert widths[2] == pytest.approx(2 * 1.96 / np.sqrt(300), rel=0.2)


def test_bootstrap_ci_is_degenerate_for_identical_seeds():
    column = np.array([-100.0, -37.3, -0.1, 12.7])
    values = np.repeat(column[:, None], 7, axis=1)
    mean, low, high = scoring.bootstrap_ci(values)
    np.testing.assert_array_equal(mean, column)
    np.testing.assert_array_equal(low, mean)  # exactly zero width
    np.testing.assert_array_equal(high, mean)
    _, low1, high1 = scoring.bootstrap_ci(np.array([[3.0], [4.0]]))  # a single seed
    np.testing.assert_array_equal(high1 - low1, [0.0, 0.0])


def test_bootstrap_ci_is_deterministic_and_matches_a_direct_resampling():
    values = fake_values(6, 5, seed=3)
    a = scoring.bootstrap_ci(values)
    b = scoring.bootstrap_ci(values)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # the same resamples drawn directly: index the seeds and average
    rng = np.random.default_rng(scoring.BOOTSTRAP_SEED)
    idx = rng.integers(0, 5, size=(scoring.NUM_BOOTSTRAP, 5))
    boot = values[:, idx].mean(axis=-1)  # (T, resamples)
    low, high = np.percentile(boot, [2.5, 97.5], axis=1)
    np.testing.assert_allclose(a[1], low, atol=1e-9)
    np.testing.assert_allclose(a[2], high, atol=1e-9)


# --- the comparison's statistics --------------------------------------------------------------

seeds = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(seeds, seeds)
def test_probability_of_improvement_counts_pairs_ties_half(x, y):
    x, y = np.array(x), np.array(y)
    pairs = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    p = scoring.probability_of_improvement(x, y)
    assert p == pytest.approx(pairs.mean())
    u = scipy.stats.mannwhitneyu(x, y).statistic  # the Mann-Whitney U over the pairs
    assert p == pytest.approx(u / (len(x) * len(y)))
    batch = scoring.probability_of_improvement(np.stack([x, x[::-1]]), np.stack([y, y]))
    np.testing.assert_allclose(batch, [p, p])  # a resample per row, as the bootstrap calls it
    assert p + scoring.probability_of_improvement(y, x) == pytest.approx(1.0)


def test_iqm_is_the_mean_of_the_middle_half():
    x = np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -100.0])
    assert scoring.iqm(x) == pytest.approx(np.mean([2.0, 3.0, 4.0, 5.0]))


def test_the_statistics_are_rliables():
    metrics = pytest.importorskip("rliable.metrics")  # its numpy part imports without arch
    rng = np.random.default_rng(1)
    x, y, panels = rng.normal(size=7), rng.normal(size=9), rng.normal(size=(9, 3))
    assert scoring.probability_of_improvement(x, y) == pytest.approx(
        metrics.probability_of_improvement(x[:, None], y[:, None])
    )
    mean, iqm = scoring._mean_and_iqm(*panels.T)
    assert mean == pytest.approx(metrics.aggregate_mean(panels))
    assert iqm == pytest.approx(metrics.aggregate_iqm(panels))


def test_an_agent_better_in_every_seed_improves_with_certainty():
    better, worse = np.arange(5.0) + 10, np.arange(6.0)
    assert scoring.improvement([(better, worse)]) == (1.0, 1.0, 1.0)
    assert scoring.improvement([(worse, better)]) == (0.0, 0.0, 0.0)


def test_the_bootstrap_is_stratified_each_panel_resampled_on_its_own():
    # Two panels of constant seeds: the mean of the panels' means cannot vary under a
    # stratified bootstrap (a pooled one would draw 0s and 1s in any proportion).
    mean, iqm = scoring.mean_and_iqm([np.zeros(4), np.ones(4)])
    assert mean == (0.5, 0.5, 0.5)
    assert iqm.value == 0.5


def test_intervals_contain_the_estimate_and_are_deterministic():
    x, y = fake_values(8, 1, seed=2)[:, 0], fake_values(8, 1, seed=3)[:, 0]
    p = scoring.improvement([(x, y)])
    assert p.low <= p.value <= p.high and p.high - p.low > 0.1
    assert scoring.improvement([(x, y)]) == p
    mean, iqm = scoring.mean_and_iqm([x])
    assert mean.value == pytest.approx(x.mean()) and mean.low < mean.value < mean.high
    assert iqm.value == pytest.approx(scoring.iqm(x)) and iqm.low < iqm.value < iqm.high


def test_one_seed_has_no_interval():
    p = scoring.improvement([(np.array([2.0]), np.array([1.0, 3.0]))])
    assert p.value == 0.5 and np.isnan(p.low) and np.isnan(p.high)


def panels():
    rng = np.random.default_rng(0)
    er = rng.normal(0.0, 0.1, size=6)
    return {
        "maze, high": {"ER": er, "model": er + 2.0, "worse": er - 1.0},
        "flute, high": {"ER": 10 * er + 50.0, "model": 10 * er + 40.0},
    }


def test_compare_normalises_per_panel_between_the_worst_and_the_best_agent():
    rows = scoring.compare(panels(), "ER")
    by = {(r.panel, r.agent): r for r in rows}
    assert by["maze, high", "worse"].mean.value == pytest.approx(0.0)
    assert by["maze, high", "model"].mean.value == pytest.approx(1.0)
    assert by["maze, high", "ER"].mean.value == pytest.approx(1 / 3)
    assert by["maze, high", "model"].improvement == (1.0, 1.0, 1.0)
    assert by["maze, high", "ER"].improvement is None  # the baseline
    assert by["flute, high", "model"].improvement == (0.0, 0.0, 0.0)
    assert by["flute, high", "model"].area == pytest.approx(panels()["flute, high"]["model"].mean())
    # over the panels: the mean of each panel's mean, P averaged over the panels with ER
    model = by[scoring.AGGREGATE, "model"]
    assert (model.panels, model.seeds) == (2, 12)
    assert model.mean.value == pytest.approx(0.5)
    assert model.improvement.value == pytest.approx(0.5)
    worse = by[scoring.AGGREGATE, "worse"]
    assert (worse.panels, worse.seeds, worse.improvement.value) == (1, 6, 0.0)
    assert [r.panel for r in rows].count(scoring.AGGREGATE) == 3


def test_one_panel_has_no_aggregate_rows_and_one_agent_no_scale():
    rows = scoring.compare({"p": {"ER": np.arange(3.0)}}, "ER")
    assert len(rows) == 1 and np.isnan(rows[0].mean.value)
    assert "| p | ER | 3 | 1.00 | n/a | n/a | (baseline) |" in scoring.markdown_table(rows, "ER")


def test_markdown_and_csv_tables_hold_every_row():
    rows = scoring.compare(panels(), "ER")
    table = scoring.markdown_table(rows, "ER", label=str.upper).splitlines()
    assert table[0].startswith("| panel | agent | seeds | area |")
    assert table[0].endswith("| P(agent > ER) [95% CI] |")
    assert len(table) == 2 + len(rows)
    assert "| maze, high | MODEL | 6 |" in table[3] and table[3].endswith("| 1.00 [1.00, 1.00] |")
    assert table[-1].startswith(f"| {scoring.AGGREGATE} (1) | WORSE | 6 |  |")
    parsed = list(csv.DictReader(io.StringIO(scoring.csv_text(rows))))
    assert len(parsed) == len(rows) and tuple(parsed[0]) == scoring.CSV_HEADER
    model = next(r for r in parsed if r["agent"] == "model" and r["panel"] == "maze, high")
    assert float(model["p_improvement"]) == 1.0 and float(model["mean"]) == pytest.approx(1.0)
    assert parsed[0]["p_improvement"] == ""  # ER against itself: not applicable


def test_performance_profile_is_the_fraction_above_each_score():
    taus = np.array([-1.0, 0.5, 2.0])
    fraction, low, high = scoring.performance_profile(
        [np.array([0.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.0])], taus
    )
    np.testing.assert_allclose(fraction, [1.0, 0.375, 0.0])  # (3/4 + 0/2) / 2 above 0.5
    assert np.all(low <= fraction) and np.all(fraction <= high)
    assert low[0] == high[0] == 1.0


def test_scoring_imports_neither_jax_nor_matplotlib():
    code = (
        "import sys, scoring;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'matplotlib'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_readers_libraries_are_no_part_of_a_runs_version():
    # an edit to the statistics must not make finished runs "another version"
    sources = provenance.source_files()
    assert "training/results.py" in sources
    assert "scoring.py" not in sources and "curves.py" not in sources


def test_a_panel_of_one_agent_counts_for_p_but_not_for_the_normalised_aggregate():
    rows = scoring.compare(
        {"a": {"ER": np.array([1.0, 2.0]), "m": np.array([3.0, 4.0])}, "b": {"m": np.ones(3)}},
        "ER",
    )
    m = next(r for r in rows if r.panel == scoring.AGGREGATE and r.agent == "m")
    assert (m.panels, m.seeds, m.mean.value, m.improvement.value) == (2, 5, 1.0, 1.0)
    b = next(r for r in rows if r.panel == "b")
    assert np.isnan(b.mean.value) and b.improvement is None  # no ER in panel b
