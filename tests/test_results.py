"""The `.out` format (`training/results.py`): reading results safely, per-seed views, and the
bootstrap interval over seeds."""

import operator
import os
import pickle
import types

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fake_values, run_tool, write_fake_out

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


# --------------------------------------------------------------------------------------------
# Results are data: a file from elsewhere cannot run code when it is read
# --------------------------------------------------------------------------------------------


class RunsACommand:
    """What a malicious `.out` could hold: unpickling it calls `os.system`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_out(path, marker) -> str:
    record = {
        "config": types.SimpleNamespace(agent_type="ER", num_seeds=2),
        "metrics": {"reward_rates": [np.zeros(2), RunsACommand(marker)], "eval_times": [0, 50]},
    }
    path.write_bytes(pickle.dumps(record))
    return str(path)


def test_a_pickle_that_runs_code_is_refused_and_its_command_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = malicious_out(tmp_path / "colleague.out", marker)
    with pytest.raises(results.ResultsError) as info:
        results.load_out(path)
    line = str(info.value)
    assert line.startswith(f"{path}: refused type ") and "system" in line and "\n" not in line
    (tmp_path / "colleague.params").write_bytes(pickle.dumps({"Q": [RunsACommand(marker)]}))
    with pytest.raises(results.ResultsError, match="refused type"):
        results.load_params(str(tmp_path / "colleague.params"))
    for script in ("plot_metric.py", "sweep_summary.py"):  # every reader goes through it
        done = run_tool(script, "--data", path, "--no-show", cwd=tmp_path)
        assert done.returncode == 2 and "refused type" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_the_reference_files_of_jax_arrays_still_load_as_numpy(tmp_path):
    """The reference pickles jax arrays (jax >= 0.4 as `_reconstruct_array`, older jax's
    DeviceArray as `operator.pos` of its value): they load as the numpy arrays they hold."""

    class OldDeviceArray:
        def __init__(self, value):
            self.value = value

        def __reduce__(self):
            return operator.pos, (self.value,)

    rates = [jnp.arange(3.0), jnp.ones(3)]
    record = {
        "config": types.SimpleNamespace(agent_type="ER", num_seeds=3),
        "metrics": {"reward_rates": rates, "eval_times": [jnp.int32(0), 500]},
    }
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"reference_{protocol}.out"
        path.write_bytes(pickle.dumps(record, protocol=protocol))
        times, values = results.load_metric(str(path))
        np.testing.assert_array_equal(values, [[0, 1, 2], [1, 1, 1]])
        np.testing.assert_array_equal(times, [0, 500])
    old = {"metrics": {"reward_rates": [OldDeviceArray(np.arange(2.0))], "eval_times": [0]}}
    (tmp_path / "old.out").write_bytes(pickle.dumps(old, protocol=2))
    loaded = results.load_out(str(tmp_path / "old.out"))["metrics"]["reward_rates"][0]
    assert isinstance(loaded, np.ndarray) and list(loaded) == [0.0, 1.0]


def test_params_written_and_read_back_as_numpy(tmp_path):
    saved = {"Q": {"q_function/linear": {"b": np.zeros((2, 3, 4)), "w": np.ones((2, 3, 5, 4))}}}
    paths = [str(tmp_path / "a.params"), str(tmp_path / "b.params")]
    results.write_params(paths, saved)
    loaded = results.load_params(paths[1])
    assert len(loaded["Q"]) == 3  # one tree per seed
    np.testing.assert_array_equal(loaded["Q"][2]["q_function/linear"]["w"], np.ones((5, 4)))
