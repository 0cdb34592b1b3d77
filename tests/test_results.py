"""The `.out` format (`training/results.py`): reading results safely, per-seed views, and the
bootstrap interval over seeds."""

import numpy as np
import pytest
from conftest import fake_values, write_fake_out

from training import results


def test_bootstrap_ci_contains_the_mean():
    values = fake_values(20, 8, seed=1)
    mean, low, high = results.bootstrap_ci(values)
    np.testing.assert_allclose(mean, values.mean(axis=1))
    assert np.all(low < mean) and np.all(mean < high)


def test_bootstrap_ci_shrinks_as_seeds_grow():
    rng = np.random.default_rng(2)
    widths = []
    for num_seeds in (4, 30, 300):
        values = rng.normal(0, 1, size=(50, num_seeds))
        _, low, high = results.bootstrap_ci(values)
        widths.append(np.mean(high - low))
    assert widths[0] > widths[1] > widths[2] > 0
    # ~ 2 * 1.96 / sqrt(S) for unit-variance seeds
    assert widths[2] == pytest.approx(2 * 1.96 / np.sqrt(300), rel=0.2)


def test_bootstrap_ci_is_degenerate_for_identical_seeds():
    column = np.array([-100.0, -37.3, -0.1, 12.7])
    values = np.repeat(column[:, None], 7, axis=1)
    mean, low, high = results.bootstrap_ci(values)
    np.testing.assert_array_equal(mean, column)
    np.testing.assert_array_equal(low, mean)  # exactly zero width
    np.testing.assert_array_equal(high, mean)
    _, low1, high1 = results.bootstrap_ci(np.array([[3.0], [4.0]]))  # a single seed
    np.testing.assert_array_equal(high1 - low1, [0.0, 0.0])


def test_bootstrap_ci_is_deterministic_and_matches_a_direct_resampling():
    values = fake_values(6, 5, seed=3)
    a = results.bootstrap_ci(values)
    b = results.bootstrap_ci(values)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # the same resamples drawn directly: index the seeds and average
    rng = np.random.default_rng(results.BOOTSTRAP_SEED)
    idx = rng.integers(0, 5, size=(results.NUM_BOOTSTRAP, 5))
    boot = values[:, idx].mean(axis=-1)  # (T, resamples)
    low, high = np.percentile(boot, [2.5, 97.5], axis=1)
    np.testing.assert_allclose(a[1], low, atol=1e-9)
    np.testing.assert_allclose(a[2], high, atol=1e-9)


def test_load_metric_returns_evaluations_by_seeds(tmp_path):
    values = fake_values(7, 3, seed=4)
    path = write_fake_out(tmp_path / "run.out", values)
    times, loaded = results.load_metric(path, "reward_rates")
    assert loaded.shape == (7, 3)
    np.testing.assert_allclose(loaded, values.astype(np.float32))
    np.testing.assert_array_equal(times, 500 * np.arange(7))


def test_chunks_without_updates_are_not_reported_as_gaps():
    """The diagnostics record NaN for every seed of a chunk before training starts: expected,
    so not counted; a NaN in one seed of a trained chunk is."""
    values = np.array([[np.nan, np.nan], [0.5, 0.4], [0.3, 0.2]])
    assert results.non_finite_note("a.out", "q_loss", values) is None
    values[2, 1] = np.nan
    note = results.non_finite_note("a.out", "q_loss", values)
    assert note.startswith("a.out: 1 of 6 'q_loss' values are NaN")
