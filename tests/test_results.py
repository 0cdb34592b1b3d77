"""The `.out` format (`training/results.py`): reading results safely and per-seed views."""

import operator
import os
import pickle
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, fake_values, run_tool, write_fake_out

from training import results


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


def test_a_training_run_does_not_load_scipy():
    # the statistics over seeds live in scoring.py: a run never computes them
    code = "import sys, train_ER_DQN; print('scipy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
