"""Live curves (`training/trackers.py`): what TensorBoard's and W&B's own readers return of a
run equals its `.out`, also after the run was killed and resumed; a tracker never costs the run;
neither library is imported unless asked for."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
from helpers import ROOT, load_pickle, start_script, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorboard.backend.event_processing import event_accumulator

from training import trackers
from training.checkpoint import Progress

METRICS = ("reward_rates", "q_loss", "mean_abs_q", "diverged")  # ER's `.out` metrics


def wandb_env(tmp_path) -> dict:
    """W&B offline, every file of it under `tmp_path`: no network, nothing in the home folder."""
    folders = {
        "WANDB_DIR": tmp_path,
        "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
        "WANDB_CONFIG_DIR": tmp_path / "wandb_config",
        "WANDB_DATA_DIR": tmp_path / "wandb_data",
    }
    return {"WANDB_MODE": "offline", **{k: str(v) for k, v in folders.items()}}


# --------------------------------------------------------------------------------------------
# The libraries' own readers
# --------------------------------------------------------------------------------------------


def tensorboard_series(run_dir) -> dict[str, tuple[list, list]]:
    """tag -> (steps, values) as TensorBoard's event reader returns them (purges applied)."""
    reader = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.SCALARS: 0}
    )
    reader.Reload()
    return {
        tag: ([e.step for e in reader.Scalars(tag)], [e.value for e in reader.Scalars(tag)])
        for tag in reader.Tags()["scalars"]
    }


def wandb_records(path) -> list[dict]:
    """The records of one offline run file, as `wandb leet inspect --json` prints them."""
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)]
    lines = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in lines.stdout.splitlines() if line.strip()]


def wandb_histories(wandb_dir) -> dict[str, dict]:
    """run name -> {'id', 'group', 'config', 'rows': {step: item}} over every offline segment
    of the run, in order. A resumed segment's rows at steps the run already has are dropped,
    as W&B drops a step below a resumed run's current step."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "*.wandb"))):
        records = wandb_records(path)
        if not any(r["type"] == "run" for r in records):
            continue  # a killed segment whose records W&B had not written yet
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        seen = runs.setdefault(
            run["display_name"], {"id": run["run_id"], "group": run["run_group"], "rows": {}}
        )
        assert seen["id"] == run["run_id"]  # a resumed segment continues the same run
        seen.setdefault("config", run["config"]["update"])
        segment = [r["history"]["item"] for r in records if r["type"] == "history"]
        steps = [item["_step"] for item in segment]
        assert steps == sorted(set(steps))  # within a segment: every step once
        last = max(seen["rows"], default=-1)
        seen["rows"].update({item["_step"]: item for item in segment if item["_step"] > last})
    return runs


# --------------------------------------------------------------------------------------------
# What each run logs
# --------------------------------------------------------------------------------------------


def test_runs_one_per_seed_and_a_mean_and_a_grid_one_per_point():
    point = {"alpha_adam": 1e-3}
    specs = trackers.run_specs("runs/ER", [point], [], 2, per_seed=False)
    assert [(s.name, s.group, s.kind) for s in specs] == [
        ("runs/ER/seed_0", "runs/ER", "seed"),
        ("runs/ER/seed_1", "runs/ER", "seed"),
        ("runs/ER/mean", "runs/ER", "mean"),
    ]
    assert specs[1].config == {**point, "seed_index": 1}
    points, names = [point, {"alpha_adam": 3e-3}], ["alpha_adam=0.001", "alpha_adam=0.003"]
    grid = trackers.run_specs("g", points, names, 30, per_seed=False)
    assert [(s.name, s.kind, s.point) for s in grid] == [
        ("g/alpha_adam=0.001", "point", 0),
        ("g/alpha_adam=0.003", "point", 1),
    ]
    per_seed = trackers.run_specs("g", points, names, 2, per_seed=True)
    assert [s.name for s in per_seed][:3] == [
        "g/alpha_adam=0.001/seed_0",
        "g/alpha_adam=0.001/seed_1",
        "g/alpha_adam=0.001/mean",
    ]
    assert per_seed[0].group == "g/alpha_adam=0.001"


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy 2-core machine
@given(
    hnp.arrays(np.float32, (2, 5), elements=st.floats(-1e6, 1e6, width=32)),
    hnp.arrays(np.bool_, (2, 5)),
)
def test_a_mean_run_averages_the_seeds_that_have_not_diverged(values, diverged):
    latest = {"reward_rates": values, "diverged": diverged}
    specs = trackers.run_specs("r", [{}, {}], ["a", "b"], 5, per_seed=True)
    for spec in specs:
        logged = trackers.scalars(spec, latest, 7.0)
        row, gone = values[spec.point], diverged[spec.point]
        assert logged["steps_per_s"] == 7.0
        if spec.kind == "seed":
            assert logged["reward_rates"] == row[spec.seed]
            assert logged["diverged"] == float(gone[spec.seed])
        else:
            kept = row[~gone].astype(np.float64)
            expected = kept.mean() if kept.size else np.nan
            np.testing.assert_allclose(logged["reward_rates"], expected, rtol=1e-12)
            assert logged["diverged"] == gone.mean()
    point = trackers.run_specs("r", [{}, {}], ["a", "b"], 5, per_seed=False)[1]
    logged = trackers.scalars(point, latest, 7.0)
    assert [logged[f"reward_rates/seed_{s}"] for s in range(5)] == list(values[1])


def test_flat_hyperparameters_are_scalars_with_the_provenance():
    flat = trackers.flat_hyperparameters(
        {"gamma": 0.9, "env_config": {"grid_size": 4}, "double_DQN": False, "x": None},
        {"jax": "0.10.2"},
    )
    assert flat == {
        "gamma": 0.9,
        "env_config.grid_size": 4,
        "double_DQN": False,
        "x": "None",
        "provenance.jax": "0.10.2",
    }


# --------------------------------------------------------------------------------------------
# Never at the run's expense, and nothing imported unless asked for
# --------------------------------------------------------------------------------------------


def fake_setup() -> types.SimpleNamespace:
    """A run of 2 seeds as the listener sees it (`experiment.Setup`)."""
    cfg = {"num_seeds": 2, "num_steps": 200, "eval_frequency": 50, "gamma": 0.9}
    return types.SimpleNamespace(cfg=cfg, points=[cfg], axes={}, provenance={"jax": "x"})


def one_evaluation() -> dict:
    return {"reward_rates": [np.float32([[1, 2]])], "diverged": [np.bool_([[0, 0]])]}


def test_no_tracker_library_is_imported_unless_asked_for(tmp_path):
    script = f"""
import sys, types
import numpy as np
sys.path.insert(0, {ROOT!r})
import reproduce_figure4, agent_registry
from training import trackers
from training.checkpoint import Progress
cfg = {{"num_seeds": 2, "num_steps": 200, "eval_frequency": 50}}
setup = types.SimpleNamespace(cfg=cfg, points=[cfg], axes={{}}, provenance={{}})
evaluation = {{"reward_rates": [np.float32([[1, 2]])], "diverged": [np.bool_([[0, 0]])]}}
listener = trackers.open_listener(None, "run", setup, Progress.start([]))
listener.evaluated(0, evaluation, 1.0); listener.close()
loaded = sorted(m for m in ("wandb", "tensorboard", "tensorboardX") if m in sys.modules)
assert not loaded, loaded
asked = trackers.Trackers(tensorboard={str(tmp_path / "tb")!r})
trackers.open_listener(asked, "run", setup, Progress.start([])).close()
assert "tensorboard" in sys.modules and "wandb" not in sys.modules
"""
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    assert process.returncode == 0, process.stderr[-3000:]


def test_an_unwritable_folder_or_a_wandb_not_logged_in_is_one_warning(
    tmp_path, capsys, monkeypatch
):
    for name, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    asked = trackers.Trackers(tensorboard=str(a_file / "tb"), wandb_project="p")
    asked = asked._replace(wandb_mode="online")  # not logged in: W&B refuses at once
    listener = trackers.open_listener(asked, "run", fake_setup(), Progress.start([]))
    listener.evaluated(0, one_evaluation(), 1.0)
    listener.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"warning: --tensorboard: cannot write {a_file / 'tb'}: ")
    assert lines[1].startswith("warning: --wandb: ") and lines[1].endswith("training without it")
    assert listener.backends == {}


def test_a_grid_logs_one_tensorboard_run_per_point_with_its_seeds_as_series(tmp_path):
    points = [
        {"num_seeds": 2, "num_steps": 200, "eval_frequency": 50, "alpha_adam": a}
        for a in (1e-3, 3e-3)
    ]
    setup = types.SimpleNamespace(
        cfg=points[0], points=points, axes={"alpha_adam": [1e-3, 3e-3]}, provenance={}
    )
    asked = trackers.Trackers(tensorboard=str(tmp_path / "tb"), group="grid")
    listener = trackers.open_listener(asked, "run", setup, Progress.start([]), quiet=True)
    history = {
        "reward_rates": [np.float32([[1, 2], [3, 4]])],
        "diverged": [np.bool_([[0, 0], [0, 1]])],
    }
    listener.evaluated(0, history, 1.0)
    listener.close()
    assert sorted(os.listdir(tmp_path / "tb" / "grid")) == ["alpha_adam=0.001", "alpha_adam=0.003"]
    logged = tensorboard_series(tmp_path / "tb" / "grid" / "alpha_adam=0.003")
    assert logged["reward_rates/seed_0"] == ([0], [3.0]) and logged["reward_rates/seed_1"] == (
        [0],
        [4.0],
    )
    assert logged["reward_rates/mean"] == ([0], [3.0])  # seed 1 diverged: left out of the mean
    assert logged["diverged/mean"] == ([0], [0.5])


def test_a_tracker_that_fails_while_logging_is_dropped_with_one_line(capsys):
    class Broken:
        calls = 0

        def log(self, t, logged):
            Broken.calls += 1
            raise OSError(28, "No space left on device")

        def close(self):
            raise AssertionError("a dropped tracker is not closed again")

    specs = trackers.run_specs("r", [{}], [], 2, per_seed=False)
    listener = trackers.Listener(specs, {"tensorboard": Broken()}, {}, 50, quiet=True)
    for t in (0, 50):
        listener.evaluated(t, one_evaluation(), 1.0)
    listener.close()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "warning: tensorboard: OSError: [Errno 28] No space left on device; training goes on "
        "without it"
    )
    assert Broken.calls == 1


def finish(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def test_the_loop_hands_evaluations_over_and_a_flush_waits_for_them():
    """A tracker that takes long does not hold the loop: `evaluated` returns while the tracker
    is still busy (it waits for the test to let it go on), and `flush` returns once it is done."""
    go_on, seen = threading.Event(), []

    class Busy:
        def log(self, t, logged):
            if not go_on.wait(60):
                raise AssertionError("the loop waited for the tracker")
            seen.append((t, logged[0]["reward_rates"]))

        def close(self):
            pass

    specs = trackers.run_specs("r", [{}], [], 2, per_seed=False)
    listener = trackers.Listener(specs, {"wandb": Busy()}, {}, 50, quiet=True)
    for t in (0, 50, 100):
        listener.evaluated(t, one_evaluation(), 1.0)
    go_on.set()
    listener.flush()
    assert seen == [(0, 1.0), (50, 1.0), (100, 1.0)]
    listener.close()
    assert not listener.thread


def test_an_error_beside_the_trackers_stops_the_curves_in_one_line_not_the_run(capsys):
    logged, closed = [], []

    class Fine:
        def log(self, t, values):
            logged.append(t)

        def close(self):
            closed.append(True)  # its runs are still finished

    specs = trackers.run_specs("r", [{}, {}], [], 2, per_seed=False)  # two points, one logged
    listener = trackers.Listener(specs, {"tensorboard": Fine()}, {}, 50, quiet=True)
    listener.evaluated(0, one_evaluation(), 1.0)
    listener.flush()  # returns: the thread did not die with the item
    listener.evaluated(50, one_evaluation(), 1.0)
    listener.close()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: live curves: IndexError: ") and logged == []
    assert closed == [True]
    assert line.endswith("; training goes on without them")


# --------------------------------------------------------------------------------------------
# A real run: the readers' series equal the .out, also after a kill and --resume
# --------------------------------------------------------------------------------------------

NUM_STEPS, CHUNK = 1000, 50  # 20 chunks: long enough to be killed part-way


def check_series_equal_out(tmp_path, output: str, wandb_runs: dict) -> None:
    """Every seed's TensorBoard and W&B series equal the `.out`'s values at the same steps, each
    step once; the mean runs hold the mean over seeds."""
    record = load_pickle(tmp_path / f"{output}.out")
    steps, metrics = record["metrics"]["eval_times"], record["metrics"]
    assert steps == list(range(0, NUM_STEPS, CHUNK))
    values = {name: np.asarray(metrics[name]) for name in METRICS}  # [E, S]
    for s in range(2):
        logged_tb = tensorboard_series(tmp_path / "tb" / output / f"seed_{s}")
        rows = wandb_runs[f"{output}/seed_{s}"]["rows"]
        assert sorted(rows) == steps
        for name in METRICS:
            expected = values[name][:, s].astype(np.float32)
            assert logged_tb[name][0] == steps, name  # every step once, none missing
            np.testing.assert_array_equal(np.float32(logged_tb[name][1]), expected, err_msg=name)
            from_wandb = [float(rows[t][name]) for t in steps]
            np.testing.assert_array_equal(np.float32(from_wandb), expected, err_msg=name)
        assert set(logged_tb) == {*METRICS, "steps_per_s"}
    mean_tb = tensorboard_series(tmp_path / "tb" / output / "mean")
    np.testing.assert_allclose(mean_tb["reward_rates"][1], values["reward_rates"].mean(axis=1))
    mean_rows = wandb_runs[f"{output}/mean"]["rows"]
    np.testing.assert_allclose(
        [mean_rows[t]["reward_rates"] for t in steps], values["reward_rates"].mean(axis=1)
    )


def wait_for_evaluations(process, out_path, count: int) -> None:
    deadline = time.time() + 900
    while process.poll() is None:
        assert time.time() < deadline, "no evaluations written"
        if (
            os.path.exists(out_path)
            and len(load_pickle(out_path)["metrics"]["eval_times"]) >= count
        ):
            return
        time.sleep(0.05)


def test_live_curves_equal_the_out_after_a_kill_and_resume(tmp_path, monkeypatch):
    """A run killed (SIGKILL) part-way and resumed; then put back to its checkpoint before last,
    whose later steps it has logged already (as a kill leaves it), and resumed again.
    TensorBoard's reader and W&B's offline files return each seed's series equal to the
    `.out`'s, each step once. (The resumed `.out` is the uninterrupted run's, bit for bit:
    `test_checkpoint.py`.)"""
    for name, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    raw = tiny_config("ER", num_steps=NUM_STEPS, checkpoint_frequency=100)
    flags = ("--tensorboard", "tb", "--wandb", "proj", "--wandb-mode", "offline")
    killed = start_script("ER", raw, tmp_path, "cut", *flags)
    wait_for_evaluations(killed, tmp_path / "cut.out", 3)  # past the checkpoint at step 100
    killed.send_signal(signal.SIGKILL)
    _, killed_stderr = killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    finish(start_script("ER", raw, tmp_path, "cut", *flags, "--resume"))
    # As a kill in the last chunk leaves it: every step logged, the checkpoint before the last.
    shutil.copy(tmp_path / "cut.ckpt.prev", tmp_path / "cut.ckpt")
    stderr = finish(start_script("ER", raw, tmp_path, "cut", *flags, "--resume"))
    assert "warning" not in stderr, stderr

    wandb_runs = wandb_histories(tmp_path)
    assert set(wandb_runs) == {"cut/seed_0", "cut/seed_1", "cut/mean"}
    segments = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(segments) == 3 * 3, killed_stderr  # 3 segments of each run
    check_series_equal_out(tmp_path, "cut", wandb_runs)
    seed_1 = wandb_runs["cut/seed_1"]
    assert seed_1["group"] == "cut" and seed_1["config"]["seed_index"] == 1
    assert seed_1["config"]["provenance"]["jax"]
