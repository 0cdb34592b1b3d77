"""The README's "Adding an agent", done in a copy of the project: its toy agent (one new file,
`train_online_DQN.py`, and one registry row) trains from its own script, is ranked by
`sweep_summary.py` and measured by `benchmark.py`, is refused by the Figure 4 driver in one
line, and no other file is touched."""

import json

from extension_helpers import (
    TINY,
    benchmark_one,
    copy_project,
    readme_code_blocks,
    replace_once,
    run_python,
    tiny_config,
    touched_files,
    train_grid_and_rank,
)

HEADING = "## Adding an agent"
LAST_IMPORT = "import train_simple_model_DQN\n"
LAST_ROW_END = '"Gaussian latent model"\n    ),\n'
PROCMAZE = {"env_config": {"grid_size": 3}}  # ER's ProcMaze made small


def add_the_readme_agent(project):
    """The README's file as `train_online_DQN.py`; its import and row in `agent_registry.py`."""
    script, registry_import, registry_row = readme_code_blocks(HEADING)
    assert "DEFINITION = AgentDefinition(" in script
    (project / "train_online_DQN.py").write_text(script)
    path = project / "agent_registry.py"
    replace_once(path, LAST_IMPORT, LAST_IMPORT + registry_import)
    replace_once(path, LAST_ROW_END, LAST_ROW_END + registry_row)


def test_adding_an_agent_touches_its_file_and_the_registry_only(tmp_path):
    project = copy_project(tmp_path / "project")
    add_the_readme_agent(project)
    added = ["agent_registry.py", "train_online_DQN.py"]
    assert touched_files(project) == added
    runs = tmp_path / "runs"
    runs.mkdir()

    # Train a 2 x 2 grid of it with its own script (one run, one .out per point), rank it.
    record = train_grid_and_rank(project, "train_online_DQN.py", PROCMAZE, runs)
    assert record["config"].agent_type == "online_DQN"
    assert len(record["metrics"]["reward_rates"]) == 4
    assert "q_loss" in record["metrics"]  # the Q step's diagnostics, as for every agent

    # A key of another family is refused in one line, naming the agent.
    bad = runs / "bad.json"
    bad.write_text(json.dumps(tiny_config(**PROCMAZE, rollout_length=3)))
    output = str(runs / "b")
    refused = run_python(project, "train_online_DQN.py", "-q", "-c", str(bad), "-o", output)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "rollout_length: unknown key (not used by the online_DQN agent)" in refused.stderr

    # Benchmark it by its registry name.
    row = benchmark_one(project, "online_DQN", {**TINY, **PROCMAZE}, runs)
    assert row["agent"] == "online_DQN" and row["steps_per_s"] > 0 and row["mflop_per_step"] > 0

    # The Figure 4 driver refuses it in one line: it has no row in the paper's table.
    refused = run_python(project, "reproduce_figure4.py", "--quick", "--agents", "online_DQN")
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1 and "online_DQN" in refused.stderr

    assert touched_files(project) == added
