"""The README's "Adding an environment", done in a copy of the project: its toy environment (one
class and its state, one entry in the list) trains, is ranked by `sweep_summary.py` and measured
by `benchmark.py`, is refused by the Figure 4 driver in one line, and `environments.py` is the
only file touched."""

from extension_helpers import (
    TINY,
    benchmark_one,
    copy_project,
    readme_code_blocks,
    replace_once,
    run_python,
    touched_files,
    train_grid_and_rank,
)

HEADING = "## Adding an environment"
LIST_LINE = "ENVIRONMENT_CLASSES = (ProcMaze, ButtonGrid, PanFlute, OpenGrid)\n"
LIST_COMMENT = "# The one list of environments"
ENVIRONMENT_KEYS = {"environment": "Corridor", "episodic_env": False, "env_config": {"length": 4}}


def add_the_readme_environment(project):
    """Inserts the README's class above the list and its list line in place of the list's."""
    environment_class, list_line = readme_code_blocks(HEADING)
    assert list_line.startswith("ENVIRONMENT_CLASSES = (") and "Corridor" in list_line
    path = project / "environments.py"
    replace_once(path, LIST_COMMENT, environment_class + "\n\n" + LIST_COMMENT)
    replace_once(path, LIST_LINE, list_line)


def test_adding_an_environment_touches_environments_py_only(tmp_path):
    project = copy_project(tmp_path / "project")
    add_the_readme_environment(project)
    assert touched_files(project) == ["environments.py"]
    runs = tmp_path / "runs"
    runs.mkdir()

    # Train ER on a 2 x 2 grid of it (one run, one .out per point), rank it.
    record = train_grid_and_rank(project, "train_ER_DQN.py", ENVIRONMENT_KEYS, runs)
    assert record["config"].environment == "Corridor"
    rates = record["metrics"]["reward_rates"]
    assert len(rates) == 4 and all(((r >= 0) & (r <= 1)).all() for r in rates)

    # Benchmark it.
    row = benchmark_one(project, "ER", {**ENVIRONMENT_KEYS, **TINY}, runs)
    assert row["config_changes"]["environment"] == "Corridor" and row["steps_per_s"] > 0

    # The Figure 4 driver refuses it in one line.
    refused = run_python(project, "reproduce_figure4.py", "--quick", "--envs", "Corridor")
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1 and "'Corridor'" in refused.stderr

    assert touched_files(project) == ["environments.py"]
