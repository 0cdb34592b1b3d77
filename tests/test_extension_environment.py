"""The README's "Adding an environment", done in a copy of the project: its toy environment (one
class and its state, one entry in the list) trains, is ranked by `sweep_summary.py` and measured
by `benchmark.py`, is refused by the Figure 4 driver in one line, and `environments.py` is the
only file touched."""

import json
import pickle

from extension_helpers import (
    ROOT,
    copy_project,
    ok,
    readme_code_blocks,
    replace_once,
    run_python,
    touched_files,
)

HEADING = "## Adding an environment"
LIST_LINE = "ENVIRONMENT_CLASSES = (ProcMaze, ButtonGrid, PanFlute, OpenGrid)\n"
LIST_COMMENT = "# The one list of environments"
ENVIRONMENT_KEYS = {"environment": "Corridor", "episodic_env": False, "env_config": {"length": 4}}
TINY = {  # what the benchmark's shipped config needs to be small, beside the environment
    "num_hidden_layers": 1,
    "num_hidden_units": 16,
    "batch_size": 8,
    "buffer_size": 500,
    "eval_steps": 20,
    "eval_batch_size": 4,
}
GRID = {"alpha_adam": [1e-3, 3e-3], "softmax_temp": [0.1, 1.0]}


def add_the_readme_environment(project):
    """Inserts the README's class above the list and its list line in place of the list's."""
    environment_class, list_line = readme_code_blocks(HEADING)
    assert list_line.startswith("ENVIRONMENT_CLASSES = (") and "Corridor" in list_line
    path = project / "environments.py"
    replace_once(path, LIST_COMMENT, environment_class + "\n\n" + LIST_COMMENT)
    replace_once(path, LIST_LINE, list_line)


def tiny_config(**changes):
    raw = json.loads((ROOT / "configs" / "ER.json").read_text())
    raw.update(TINY, num_seeds=2, num_steps=200, training_start_time=50, eval_frequency=50)
    return {**raw, "save_frequency": 100, **ENVIRONMENT_KEYS, **changes}


def test_adding_an_environment_touches_environments_py_only(tmp_path):
    project = copy_project(tmp_path / "project")
    add_the_readme_environment(project)
    assert touched_files(project) == ["environments.py"]
    runs = tmp_path / "runs"
    runs.mkdir()

    # Train ER on a 2 x 2 grid of it: one run, one .out per grid point.
    config = runs / "corridor_grid.json"
    config.write_text(json.dumps(tiny_config(**GRID)))
    ok(run_python(project, "train_ER_DQN.py", "-q", "-c", str(config), "-o", str(runs / "c")))
    outs = sorted(runs.glob("c_*.out"))
    assert len(outs) == 4, outs
    with open(outs[0], "rb") as f:
        record = pickle.load(f)
    assert record["config"].environment == "Corridor"
    rates = record["metrics"]["reward_rates"]
    assert len(rates) == 4 and all(((r >= 0) & (r <= 1)).all() for r in rates)

    # Rank the grid.
    picture = runs / "grid.png"
    flags = ["--no-show", "--save", str(picture), "--data", *map(str, outs)]
    summary = ok(run_python(project, "sweep_summary.py", *flags))
    assert "best" in summary.stdout and picture.exists()

    # Benchmark it (one seed, one timed chunk, no second launch).
    changes = runs / "changes.json"
    changes.write_text(json.dumps({**ENVIRONMENT_KEYS, **TINY}))
    benchmark = runs / "benchmark"
    flags = ["--agents", "ER", "--seeds", "1", "--chunks", "1", "--no-second-launch"]
    ok(
        run_python(
            project, "benchmark.py", *flags, "--config", str(changes), "--output", str(benchmark)
        )
    )
    (row,) = json.loads(benchmark.with_suffix(".json").read_text())["results"]
    assert row["config_changes"]["environment"] == "Corridor" and row["steps_per_s"] > 0

    # The Figure 4 driver refuses it in one line.
    refused = run_python(project, "reproduce_figure4.py", "--quick", "--envs", "Corridor")
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1 and "'Corridor'" in refused.stderr

    assert touched_files(project) == ["environments.py"]
