"""Saved programs (`training/saved_programs.py`): a second launch loads them instead of tracing;
their key follows what is compiled and the source it runs."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from helpers import ROOT, definition, tiny_config

import environments
import train_ER_DQN
from training import compilation, config, provenance, saved_programs


def test_saved_programs_are_loaded_on_a_second_launch_not_traced(tmp_path):
    raw = tiny_config("ER", num_seeds=2)
    cfg = {**config.validate_config(raw, definition("ER")), "agent_type": "ER", "seed": 0}
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = train_ER_DQN.build_agent(cfg, env)
    hp = config.grid_hyperparameters([cfg])
    keys = jax.random.split(jax.random.PRNGKey(2), 2)

    def one_run(run):
        state = run.init(keys)
        state, report = run.chunk(state, jnp.int32(0), jnp.bool_(True), hp)
        scores = run.evaluate(state.learner, keys, hp)
        return jax.device_get((state.learner.q_params, report, scores))

    first = one_run(compilation.compile_run(agent, env, cfg, program_dir=str(tmp_path)))
    saved = sorted(n for n in os.listdir(tmp_path) if not n.endswith(".sha256"))  # seals apart
    assert [name.split("-")[0] for name in saved] == ["chunk", "evaluate", "init"]

    def untraceable(*args):
        raise AssertionError("traced instead of loaded")

    # A second launch: the agent's functions are never called, the saved programs run.
    blind = agent._replace(init=untraceable, q_values=untraceable, update=untraceable)
    second = one_run(compilation.compile_run(blind, env, cfg, program_dir=str(tmp_path)))
    assert sorted(n for n in os.listdir(tmp_path) if not n.endswith(".sha256")) == saved
    jax.tree.map(np.testing.assert_array_equal, first, second)


def test_a_program_that_cannot_be_saved_still_runs(tmp_path, capsys):
    (tmp_path / "full").write_text("")  # its programs' folder cannot be made
    jitted = saved_programs.SavedProgramJit(lambda x: x + 1, {}, str(tmp_path / "full" / "f"))
    assert int(jitted(jnp.int32(1))) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: cannot save the traced program {tmp_path / 'full' / 'f'}-")
    assert line.endswith("(File exists); a later launch traces it again")


def test_program_key_follows_the_compiled_part_of_the_config():
    cfg = {**config.validate_config(tiny_config("ER"), definition("ER")), "seed": 0}
    sharding = compilation.pair_sharding(1, cfg["num_seeds"])
    key = saved_programs.program_key(cfg, sharding)
    # read only by the Python loop, or traced (an argument of the programs)
    for other in ({"seed": 7}, {"num_steps": 1000}, {"training_start_time": 0}, {"gamma": 0.5}):
        assert saved_programs.program_key({**cfg, **other}, sharding) == key
    for other in (
        {"batch_size": 7},
        {"double_DQN": True},
        {"eval_frequency": 25},
        {"matmul_precision": "float32"},
    ):
        assert saved_programs.program_key({**cfg, **other}, sharding) != key
    # a grid of another size has other shapes
    assert saved_programs.program_key({**cfg, "gamma": [0.5, 0.9]}, sharding, 2) != key


def test_program_key_follows_every_source_file_a_program_runs_and_the_libraries(
    tmp_path, monkeypatch
):
    """A copy of the project: an edit to any module a run executes (an agent, an environment,
    the run machinery) changes the saved programs' key and the project's version; an edit to a
    plotting or driver script does not; nor does anything but a new haiku or optax."""
    shutil.copytree(ROOT, tmp_path / "copy", ignore=shutil.ignore_patterns("tests", ".*", "*.png"))
    root = tmp_path / "copy"
    monkeypatch.setattr(provenance, "ROOT", str(root))
    cfg = {**config.validate_config(tiny_config("ER"), definition("ER")), "seed": 0}
    sharding = compilation.pair_sharding(1, cfg["num_seeds"])
    key, version = saved_programs.program_key(cfg, sharding), provenance.project_version()
    assert "training/loop.py" in provenance.source_files()
    for tool in ("plot_metric.py", "reproduce_figure4.py", "figure4/plan.py"):
        with open(root / tool, "a") as f:
            f.write("\n# an edit\n")
        assert saved_programs.program_key(cfg, sharding) == key, tool
    for source in ("agents.py", "environments.py", "training/loop.py", "replay_buffer.py"):
        with open(root / source, "a") as f:
            f.write("\n# an edit\n")
        new_key, new_version = (
            saved_programs.program_key(cfg, sharding),
            provenance.project_version(),
        )
        assert new_key != key and new_version != version, source
        key, version = new_key, new_version
    for library in ("haiku", "optax"):
        versions = {**provenance.library_versions(), library: "99.0"}
        with monkeypatch.context() as patch:
            patch.setattr(provenance, "library_versions", lambda v=versions: v)
            assert saved_programs.program_key(cfg, sharding) != key, library
