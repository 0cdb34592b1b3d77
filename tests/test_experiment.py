"""The shared run machinery: config validation, CLI, outputs, determinism, and ER end to end."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ROOT,
    SCRIPTS,
    assert_diagnostics,
    final_and_random_scores,
    load_pickle,
    run_script,
    tiny_config,
    train_in_process,
)

import agents
import environments
import train_ER_DQN
from training import (
    compilation,
    config,
    experiment,
    files,
    loop,
    provenance,
    results,
    saved_programs,
)

# ------------------------------------------------------------------------------------------
# Config validation: one line naming the key, before anything is compiled
# ------------------------------------------------------------------------------------------


def config_error(raw, agent_type="ER") -> str:
    with pytest.raises(config.ConfigError) as info:
        config.validate_config(raw, agent_type)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_configs_validate():
    for name, agent_type in [
        ("ER", "ER"),
        ("perfect_model", "perfect_model"),
        ("simple_model", "simple_model"),
        ("categorical_latent_model", "latent_model"),
        ("gaussian_latent_model", "latent_model"),
    ]:
        path = os.path.join(ROOT, "configs", f"{name}.json")
        if not os.path.exists(path):
            pytest.skip(f"{path} not written yet")
        cfg = config.load_config(path, agent_type)
        assert cfg["num_seeds"] == 30 and cfg["num_steps"] == 1_000_000
        assert cfg["env_config"] == {"grid_size": 4} and cfg["episodic_env"] is True


def test_defaults_filled_in():
    raw = tiny_config("ER")
    for key in ("save_params", "double_DQN", "updates_per_step", "episodic_env"):
        raw.pop(key, None)
    cfg = config.validate_config(raw, "ER")
    assert cfg["save_params"] is True
    assert cfg["double_DQN"] is False
    assert cfg["updates_per_step"] == 1
    assert cfg["episodic_env"] is False  # the reference's default is *continuing*
    assert cfg["fresh_obs_on_reset"] is False  # quirk Q1 reproduced by default


def test_unknown_key_with_suggestion():
    message = config_error({**tiny_config("ER"), "softmax_tmp": 0.1})
    assert "softmax_tmp" in message and "did you mean 'softmax_temp'" in message


def test_key_of_another_agent_is_rejected():
    message = config_error({**tiny_config("ER"), "rollout_length": 3})
    assert "rollout_length" in message and "not used by the ER agent" in message


def test_missing_required_key():
    raw = tiny_config("ER")
    del raw["gamma"]
    assert "gamma: missing required key" in config_error(raw)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("num_seeds", 2.5, "expected an integer"),
        ("num_seeds", True, "expected an integer"),
        ("gamma", "0.9", "expected a number"),
        ("use_target", 1, "expected true or false"),
        ("activation", "tanh", "expected one of ['relu', 'silu', 'elu']"),
        ("exploration_strat", "softmx", "did you mean 'softmax'"),
        ("gamma", 1.5, "gamma <= 1"),
        ("alpha_adam", 0.0, "0.0 < alpha_adam"),
        ("batch_size", 0, "1 <= batch_size"),
        ("b2_adam", 1.0, "b2_adam < 1.0"),
        ("environment", "ProcMase", "did you mean 'ProcMaze'"),
        ("matmul_precision", "tf32", "expected one of ['default', 'float32']"),
    ],
)
def test_bad_values(key, value, expected):
    message = config_error({**tiny_config("ER"), key: value})
    assert message.startswith(f"{key}:") and expected in message


def test_incompatible_combinations():
    raw = {**tiny_config("ER"), "exploration_strat": "epsilon_greedy"}
    assert config_error(raw).startswith("epsilon: required when")
    raw = {**tiny_config("ER"), "num_steps": 220}
    assert "multiple of eval_frequency" in config_error(raw)
    raw = tiny_config("ER")
    del raw["softmax_temp"]
    assert config_error(raw).startswith("softmax_temp: required when")


def test_env_config_errors_name_the_key():
    message = config_error({**tiny_config("ER"), "env_config": {"gridsize": 4}})
    assert "gridsize" in message
    message = config_error({**tiny_config("ER"), "env_config": {"grid_size": "4"}})
    assert "grid_size" in message


def test_traced_hyperparameters_are_the_float_keys():
    cfg = config.validate_config(tiny_config("ER"), "ER")
    hp = config.traced_hyperparameters(cfg)
    assert set(hp) == {
        "alpha_adam",
        "b1_adam",
        "b2_adam",
        "eps_adam",
        "wd_adam",
        "softmax_temp",
        "gamma",
    }
    assert all(v.dtype == jnp.float32 and v.shape == () for v in hp.values())


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    process, _ = run_script("ER", {**tiny_config("ER"), "gama": 0.9}, tmp_path)
    assert process.returncode == 2
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "gama: unknown key (did you mean 'gamma'?)" in lines[0]
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "run.out").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--seed=abc"], "argument --seed/-s: expected an integer, got 'abc'"),
        # 2**32 would share its PRNG key with seed 0, -1 with 4294967295
        (["--seed=4294967296"], "expected an integer >= 0 and <= 4294967295, got '4294967296'"),
        (["--seed=-1"], "expected an integer >= 0 and <= 4294967295, got '-1'"),
        (["--sed=1"], "unrecognized arguments: --sed=1"),
    ],
)
def test_cli_bad_flag_is_one_line_exit_2(tmp_path, capsys, monkeypatch, flags, expected):
    code, lines = main_er(tmp_path, capsys, monkeypatch, shipped_er_text(), *flags)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "bad.out").exists()


def test_cli_unreadable_config_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        process = subprocess.run(
            [sys.executable, os.path.join(ROOT, SCRIPTS["ER"]), f"--config={path}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert process.returncode == 2
        assert len(process.stderr.strip().splitlines()) == 1


def test_every_key_is_documented_in_the_readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    missing = [key for key in config.SCHEMA if f"`{key}`" not in readme]
    assert not missing


# ------------------------------------------------------------------------------------------
# One compiled chunk, shared by the tests below
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def er_run():
    raw = tiny_config("ER", num_seeds=3)
    cfg = config.validate_config(raw, "ER")
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = train_ER_DQN.build_agent(cfg, env)
    return agent, env, cfg, compilation.compile_run(agent, env, cfg)


def test_chunk_compiles_once_for_train_flag_times_and_hyperparameters(er_run):
    _, _, cfg, run = er_run
    hp = config.grid_hyperparameters([cfg])
    state = run.init(jax.random.split(jax.random.PRNGKey(0), cfg["num_seeds"]))
    state, _ = run.chunk(state, jnp.int32(0), jnp.bool_(False), hp)
    state, _ = run.chunk(state, jnp.int32(50), jnp.bool_(True), hp)
    hp2 = {**hp, "alpha_adam": jnp.array([3e-4]), "softmax_temp": jnp.array([2.0])}
    state, _ = run.chunk(state, jnp.int32(100), jnp.bool_(True), hp2)
    assert run.chunk._cache_size() == 1


def test_train_flag_off_leaves_parameters_alone(er_run):
    _, _, cfg, run = er_run
    hp = config.grid_hyperparameters([cfg])
    state = run.init(jax.random.split(jax.random.PRNGKey(1), cfg["num_seeds"]))
    before = jax.tree_util.tree_map(np.asarray, state.learner.q_params)
    state, _ = run.chunk(state, jnp.int32(0), jnp.bool_(False), hp)
    after_idle = state.learner.q_params
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after_idle)
    assert int(state.buffer.size[0, 0]) == cfg["eval_frequency"]
    state, _ = run.chunk(state, jnp.int32(50), jnp.bool_(True), hp)
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.array_equal(a, b), before, state.learner.q_params
    )
    assert all(jax.tree_util.tree_leaves(changed))


def test_seed_axis_entries_differ(er_run):
    _, _, cfg, run = er_run
    state = run.init(jax.random.split(jax.random.PRNGKey(0), cfg["num_seeds"]))
    w = np.asarray(state.learner.q_params["q_function/linear"]["w"])[0]  # grid point 0
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[1], w[2])
    walls = np.asarray(state.env_state.walls)[0]
    assert len({walls[i].tobytes() for i in range(3)}) >= 2


def test_target_refreshed_every_target_update_frequency(er_run):
    agent, env, cfg, _ = er_run
    hp = config.traced_hyperparameters(cfg)
    state = loop.init_seed(agent, env, jax.random.PRNGKey(0))
    step = jax.jit(lambda s, t, train: loop.env_step(agent, env, cfg, s, t, train, hp)[0])
    for _ in range(40):  # fill the buffer a little
        state = step(state, jnp.int32(1), False)
    state = step(state, jnp.int32(1), True)  # t % 50 != 0: target stays at the initial parameters
    target = state.learner.q_target["q_function/linear"]["w"]
    online = state.learner.q_params["q_function/linear"]["w"]
    assert not np.array_equal(target, online)
    before_refresh = online
    state = step(state, jnp.int32(50), True)  # refresh, then update: target = pre-update online
    np.testing.assert_array_equal(state.learner.q_target["q_function/linear"]["w"], before_refresh)


def test_pair_sharding_uses_as_many_devices_as_the_axes_allow():
    for devices in (jax.devices()[:1], [jax.devices()[0]] * 4, [jax.devices()[0]] * 6):
        for points, seeds in ((1, 1), (1, 30), (9, 8), (9, 30), (4, 2), (7, 1)):
            mesh = compilation.pair_sharding(points, seeds, devices).mesh
            g, s = mesh.devices.shape
            assert points % g == 0 and seeds % s == 0 and g * s <= len(devices)
            # no mesh of these divisors uses more devices
            best = max(
                a * b
                for a in range(1, points + 1)
                for b in range(1, seeds + 1)
                if points % a == 0 and seeds % b == 0 and a * b <= len(devices)
            )
            assert g * s == best, (len(devices), points, seeds, (g, s))


_SHARDED_EQUALS_UNSHARDED = """
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
from helpers import tiny_config
import environments, train_ER_DQN
from training import compilation, config
assert len(jax.devices()) == 4
raw = tiny_config("ER", num_seeds=2, alpha_adam=[1e-3, 3e-3], softmax_temp=[0.1, 0.4])
cfg = config.validate_config(raw, "ER")
points = config.grid_points(cfg)
env = environments.make_environment(cfg["environment"], cfg["env_config"])
agent = train_ER_DQN.build_agent(cfg, env)
hp = config.grid_hyperparameters(points)
keys = jax.random.split(jax.random.PRNGKey(5), 2)
results = []
for devices in (jax.devices()[:1], jax.devices()):
    run = compilation.compile_run(agent, env, cfg, len(points), devices)
    state = run.init(keys)
    state, _ = run.chunk(state, jnp.int32(0), jnp.bool_(False), hp)
    state, report = run.chunk(state, jnp.int32(50), jnp.bool_(True), hp)
    w = state.learner.q_params["q_function/linear"]["w"]
    print(len(w.sharding.device_set), w.sharding.mesh.devices.shape)
    scores = run.evaluate(state.learner, keys, hp)
    results.append(jax.device_get((state.learner.q_params, state.obs, report, scores)))
check = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
jax.tree.map(check, *results)
print("equal")
"""


def test_pairs_sharded_over_four_devices_equal_one_device_up_to_rounding():
    """A 2 x 2 grid of 2 seeds on a 2 x 2 mesh of CPU devices, against one device. Each device
    multiplies a different number of pairs' matrices at once, so the kernels may round
    differently (1e-8 here); nothing else differs, and nothing crosses devices in a chunk."""
    done = subprocess.run(
        [sys.executable, "-c", _SHARDED_EQUALS_UNSHARDED],
        cwd=ROOT,
        env={
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_COMPILATION_CACHE_DIR": "",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == ["1 (1, 1)", "4 (2, 2)", "equal"]


def test_saved_programs_are_loaded_on_a_second_launch_not_traced(tmp_path):
    raw = tiny_config("ER", num_seeds=2)
    cfg = {**config.validate_config(raw, "ER"), "agent_type": "ER", "seed": 0}
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
    saved = sorted(os.listdir(tmp_path))
    assert [name.split("-")[0] for name in saved] == ["chunk", "evaluate", "init"]

    def untraceable(*args):
        raise AssertionError("traced instead of loaded")

    # A second launch: the agent's functions are never called, the saved programs run.
    blind = agent._replace(init=untraceable, q_values=untraceable, update=untraceable)
    second = one_run(compilation.compile_run(blind, env, cfg, program_dir=str(tmp_path)))
    assert sorted(os.listdir(tmp_path)) == saved
    jax.tree.map(np.testing.assert_array_equal, first, second)


def test_a_program_that_cannot_be_saved_still_runs(tmp_path, capsys):
    (tmp_path / "full").write_text("")  # its programs' folder cannot be made
    jitted = saved_programs.SavedProgramJit(lambda x: x + 1, {}, str(tmp_path / "full" / "f"))
    assert int(jitted(jnp.int32(1))) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: cannot save the traced program {tmp_path / 'full' / 'f'}-")
    assert line.endswith("(File exists); a later launch traces it again")


def test_a_compilation_cache_it_cannot_write_is_one_warning_line(tmp_path):
    (tmp_path / "file").write_text("")
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(tiny_config("ER")))
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, SCRIPTS["ER"]), f"--config={config_path}"]
        + [f"--output={tmp_path / 'run'}", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "file" / "cache")},
    )
    assert process.returncode == 0, process.stderr
    assert process.stderr.strip().splitlines() == [
        f"warning: compilation cache {tmp_path / 'file' / 'cache'}: Not a directory; compiling "
        "from scratch (JAX_COMPILATION_CACHE_DIR moves it)"
    ]
    assert load_pickle(tmp_path / "run.out")["metrics"]["reward_rates"]


def test_program_key_follows_the_compiled_part_of_the_config():
    cfg = {**config.validate_config(tiny_config("ER"), "ER"), "seed": 0}
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
    cfg = {**config.validate_config(tiny_config("ER"), "ER"), "seed": 0}
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


def test_stale_observation_after_terminal_is_quirk_q1():
    raw = tiny_config("ER", env_config={"grid_size": 2})
    for fresh in (False, True):
        cfg = config.validate_config({**raw, "fresh_obs_on_reset": fresh}, "ER")
        env = environments.make_environment(cfg["environment"], cfg["env_config"])
        agent = train_ER_DQN.build_agent(cfg, env)
        hp = config.traced_hyperparameters(cfg)
        state = loop.init_seed(agent, env, jax.random.PRNGKey(3))
        step = jax.jit(  # one pair, with its grid and seed axes added and removed
            lambda s, a=agent, e=env, c=cfg, h=hp: jax.tree.map(
                lambda x: x[0, 0],
                loop.seeds_step(
                    a,
                    e,
                    c,
                    jax.tree.map(lambda x: x[None, None], s),
                    0,
                    False,
                    jax.tree.map(lambda x: x[None], h),
                ),
            )
        )
        seen_terminal = False
        for _ in range(60):
            new, _ = step(state)
            buffer_index = int(new.buffer.position) - 1
            terminal = bool(new.buffer.storage.terminal[buffer_index])
            if terminal:
                seen_terminal = True
                stored_next = np.unpackbits(np.asarray(new.buffer.storage.next_obs[buffer_index]))
                reset_obs = np.asarray(env.get_observation(new.env_state))
                next_obs = stored_next[: reset_obs.size].astype(bool)
                acting_obs = np.asarray(new.obs)
                if fresh:
                    np.testing.assert_array_equal(acting_obs, reset_obs)
                else:
                    np.testing.assert_array_equal(acting_obs, next_obs)
            state = new
        assert seen_terminal


# ------------------------------------------------------------------------------------------
# Outputs, determinism, and the CLI end to end
# ------------------------------------------------------------------------------------------


def train_er(raw, tmp_path, seed=0, output="run"):
    return train_in_process("ER", train_ER_DQN.build_agent, raw, tmp_path, seed, output)


def test_cli_writes_out_and_params(tmp_path):
    raw = tiny_config("ER")
    process, prefix = run_script("ER", raw, tmp_path, seed=7)
    assert process.returncode == 0, process.stderr
    record = load_pickle(prefix + ".out")
    assert record["config"].agent_type == "ER" and record["config"].seed == 7
    assert record["config"].gamma == raw["gamma"]
    metrics = record["metrics"]
    assert metrics["eval_times"] == [0, 50, 100, 150]
    assert len(metrics["reward_rates"]) == 4
    assert all(isinstance(r, np.ndarray) and r.shape == (2,) for r in metrics["reward_rates"])
    params = load_pickle(prefix + ".params")
    assert set(params) == {"Q"} and len(params["Q"]) == 2
    assert set(params["Q"][0]) == {"q_function/linear", "q_function/linear_1"}
    assert isinstance(params["Q"][0]["q_function/linear"]["w"], np.ndarray)
    assert params["Q"][0]["q_function/linear"]["w"].shape == (9 * 4, 16)
    assert_diagnostics(record)


def test_outputs_load_without_jax(tmp_path):
    process, prefix = run_script("ER", tiny_config("ER"), tmp_path)
    assert process.returncode == 0, process.stderr
    code = (
        "import pickle, sys\n"
        "sys.modules['jax'] = None  # importing jax now fails\n"
        f"out = pickle.load(open({prefix + '.out'!r}, 'rb'))\n"
        f"params = pickle.load(open({prefix + '.params'!r}, 'rb'))\n"
        "print(len(out['metrics']['reward_rates']), len(params['Q']))\n"
    )
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["4", "2"]


def test_same_seed_identical_different_seed_differs(tmp_path):
    raw = tiny_config("ER")
    a, _ = train_er(raw, tmp_path, seed=0, output="a")
    b, _ = train_er(raw, tmp_path, seed=0, output="b")
    c, _ = train_er(raw, tmp_path, seed=1, output="c")
    rates = [np.stack(r["metrics"]["reward_rates"]) for r in (a, b, c)]
    np.testing.assert_array_equal(rates[0], rates[1])
    assert not np.array_equal(rates[0], rates[2])
    assert not np.array_equal(rates[0][:, 0], rates[0][:, 1])  # seed-axis entries differ too


def chunk_program_text(raw: dict) -> str:
    """The StableHLO of a config's compiled chunk."""
    cfg = config.validate_config(raw, "ER")
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    run = compilation.compile_run(train_ER_DQN.build_agent(cfg, env), env, cfg)
    state = run.init(jax.random.split(jax.random.PRNGKey(0), cfg["num_seeds"]))
    hp = config.grid_hyperparameters([cfg])
    return run.chunk.lower(state, jnp.int32(0), jnp.bool_(True), hp).as_text()


def test_matmul_precision_float32_marks_every_product_and_changes_no_number_on_a_cpu(tmp_path):
    raw = tiny_config("ER")
    default = chunk_program_text(raw)
    float32 = chunk_program_text({**raw, "matmul_precision": "float32"})
    products = default.count("precision = [DEFAULT, DEFAULT]")
    assert products >= 6  # the Q network's layers, forward and backward, and the target's
    assert "HIGHEST" not in default
    assert float32.count("precision = [HIGHEST, HIGHEST]") == products
    assert float32.replace("HIGHEST", "DEFAULT") == default  # nothing else differs
    # A CPU computes float32 products in float32 either way: the same numbers.
    a, _ = train_er(raw, tmp_path, output="default")
    b, _ = train_er({**raw, "matmul_precision": "float32"}, tmp_path, output="float32")
    assert results.out_config(a)["matmul_precision"] == "default"
    assert results.out_config(b)["matmul_precision"] == "float32"
    jax.tree.map(np.testing.assert_array_equal, a["metrics"], b["metrics"])


def test_params_saved_on_schedule(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "save_params", lambda *a: calls.append(a[0]))
    raw = tiny_config("ER", num_steps=400, save_frequency=100)
    train_er(raw, tmp_path)
    # before chunks starting at 100, 200, 300 (100 steps accumulated each time), and at the end
    assert len(calls) == 4


def test_output_files_get_ordinary_permissions(tmp_path):
    """Written through a temporary file, yet readable like any new file (not mkstemp's 0600)."""
    path = tmp_path / "run.out"
    files.write_pickle_atomic(str(path), {"metrics": {}})
    assert path.stat().st_mode & 0o777 == 0o666 & ~files._UMASK
    assert load_pickle(str(path)) == {"metrics": {}}
    assert os.listdir(tmp_path) == ["run.out"]  # no temporary file left behind


def test_killed_run_keeps_a_complete_out_file(tmp_path):
    raw = tiny_config("ER", num_steps=400_000, eval_frequency=50, save_params=False)
    config = tmp_path / "long.json"
    config.write_text(json.dumps(raw))
    prefix = tmp_path / "long"
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, SCRIPTS["ER"]),
            f"--config={config}",
            f"--output={prefix}",
            "--quiet",
        ],
        cwd=tmp_path,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""},
    )
    out = tmp_path / "long.out"
    deadline = time.time() + 300
    while time.time() < deadline and not out.exists():
        time.sleep(0.2)
    time.sleep(1.0)  # let it rewrite the file many times, then kill it mid-run
    process.send_signal(signal.SIGKILL)
    process.wait()
    record = load_pickle(out)
    times = record["metrics"]["eval_times"]
    assert len(times) >= 1 and times == [50 * i for i in range(len(times))]
    assert len(record["metrics"]["reward_rates"]) == len(times)


# ------------------------------------------------------------------------------------------
# ER learns
# ------------------------------------------------------------------------------------------


def test_er_beats_a_random_policy(tmp_path):
    raw = tiny_config(
        "ER",
        num_hidden_units=64,
        num_steps=3000,
        eval_frequency=500,
        training_start_time=500,
        buffer_size=3000,
        target_update_frequency=100,
        eval_steps=20,
        eval_batch_size=16,
        save_params=False,
        environment="OpenGrid",  # a fixed goal: learnable in a few thousand steps
        env_config={"grid_size": 4},
    )
    final, random_score = final_and_random_scores("ER", train_ER_DQN.build_agent, raw, tmp_path)
    assert final > random_score + 3.0, (final, random_score)


# ------------------------------------------------------------------------------------------
# XLA CPU flag
# ------------------------------------------------------------------------------------------

_FLAG_PROBE = (
    "import os; from training import experiment; from jax._src import xla_bridge; "
    "print(os.environ['XLA_FLAGS']); print(len(xla_bridge._backends))"
)


YNN, DEVICES = "--xla_cpu_experimental_ynn_fusion_type", "--xla_force_host_platform_device_count"


@pytest.mark.parametrize(
    "user_flags, expected",
    [
        ("", {YNN: "dot", DEVICES: str(compilation.CPU_CORES)}),
        (f"{YNN}=eltwise", {YNN: "eltwise", DEVICES: str(compilation.CPU_CORES)}),
        (f"{DEVICES}=1", {YNN: "dot", DEVICES: "1"}),
        (
            "--xla_dump_to=/nowhere",
            {"--xla_dump_to": "/nowhere", YNN: "dot", DEVICES: str(compilation.CPU_CORES)},
        ),
    ],
)
def test_xla_flags_set_before_the_backend_starts_and_user_values_win(user_flags, expected):
    env = {**os.environ, "XLA_FLAGS": user_flags}
    done = subprocess.run(
        [sys.executable, "-c", _FLAG_PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    flags, backends = done.stdout.split("\n")[:2]
    assert dict(flag.split("=", 1) for flag in flags.split()) == expected
    assert flags.startswith(user_flags)  # the user's flags come first, untouched
    assert backends == "0"  # importing computed nothing, so XLA has not read its flags yet


# ------------------------------------------------------------------------------------------
# Inputs that cannot crash a run: one line and exit status 2 before anything compiles
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("softmax_temp", float("nan"), "softmax_temp: expected a finite number (float32), got nan"),
        ("gamma", float("inf"), "gamma: expected a finite number (float32), got inf"),
        ("alpha_adam", -float("inf"), "alpha_adam: expected a finite number (float32), got -inf"),
        ("wd_adam", 1e39, "wd_adam: expected a finite number (float32), got 1e+39"),
        (
            "buffer_size",
            1_000_000_000_000,
            "buffer_size: expected an integer of at most 2147483647 (int32), got 1000000000000",
        ),
        ("num_steps", 2**40, "num_steps: expected an integer of at most 2147483647"),
    ],
)
def test_non_finite_floats_and_unholdable_integers_are_config_errors(key, value, expected):
    assert config_error({**tiny_config("ER"), key: value}).startswith(expected)


def main_er(tmp_path, capsys, monkeypatch, text: str, *flags) -> tuple[int, list[str]]:
    """`train_ER_DQN.py --config=<text> --output=<tmp>/bad ...` in this process (as the CLI,
    without the seconds of a new interpreter). Returns (exit status, stderr lines)."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    path = tmp_path / "bad.json"
    path.write_text(text)
    argv = [f"--config={path}", f"--output={tmp_path / 'bad'}", *flags]
    code = 0
    try:
        experiment.main("ER", train_ER_DQN.build_agent, argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err.strip().splitlines()


def shipped_er_text(**changes) -> str:
    """configs/ER.json with some values replaced, as JSON text (Python's JSON writes NaN)."""
    with open(os.path.join(ROOT, "configs", "ER.json")) as f:
        raw = json.load(f)
    return json.dumps({**raw, **changes})


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"softmax_temp": float("nan")}, "softmax_temp: expected a finite number"),
        ({"softmax_temp": float("inf")}, "softmax_temp: expected a finite number"),
        ({"buffer_size": 10**12}, "buffer_size: expected an integer of at most 2147483647"),
    ],
)
def test_cli_rejects_nan_infinity_and_unholdable_sizes(
    tmp_path, capsys, monkeypatch, changes, expected
):
    text = shipped_er_text(**changes)  # the literal `NaN` / `Infinity` of Python's JSON
    code, lines = main_er(tmp_path, capsys, monkeypatch, text, "--quiet")
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["bad.json"]  # no .out, .params or temporary file


def test_cli_rejects_a_run_whose_replay_buffers_cannot_fit_in_memory(tmp_path, capsys, monkeypatch):
    """100 million transitions per seed x 30 seeds: 75 GB of replay, more than this machine
    (or CI's) has. It stops after tracing the state's shapes, before compiling or allocating."""
    available, _ = compilation.available_memory(jax.devices()[:1])
    if available > 70e9:
        pytest.skip("this machine could hold 75 GB")
    text = shipped_er_text(buffer_size=100_000_000)
    code, lines = main_er(tmp_path, capsys, monkeypatch, text, "--quiet")
    assert code == 2 and len(lines) == 1, lines
    assert "buffer_size: the run needs 75.0" in lines[0], lines
    assert "(training state 75.0" in lines[0] and "(replay buffers 75.00 GB)" in lines[0]
    assert "for 30 seeds), more than the" in lines[0]
    assert "GB of this machine's available memory" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["bad.json"]


def test_start_up_log_states_the_memory_the_run_needs(tmp_path, capsys, monkeypatch):
    raw = tiny_config("ER", num_steps=100, save_params=False)
    code, lines = main_er(tmp_path, capsys, monkeypatch, json.dumps(raw))
    assert code == 0
    assert lines[0].startswith("memory: training state 0.00 GB (replay buffers 0.00 GB), metrics ")
    assert ", the compiled loop's temporaries 0.00 GB for 2 seeds;" in lines[0]


def test_cli_output_folder_is_created_and_an_unwritable_one_is_a_one_line_error(
    tmp_path, capsys, monkeypatch
):
    raw = json.dumps(tiny_config("ER", num_steps=50, training_start_time=0, save_params=False))
    code, _ = main_er(tmp_path, capsys, monkeypatch, raw, "--output", str(tmp_path / "new/run"))
    assert code == 0 and (tmp_path / "new" / "run.out").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, lines = main_er(tmp_path, capsys, monkeypatch, raw, f"--output={blocker / 'run'}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("--output: cannot write")


# ------------------------------------------------------------------------------------------
# Two behaviours of the reference's loop
# ------------------------------------------------------------------------------------------


def test_a_chunk_acts_first_on_the_observation_of_the_environment_state(er_run):
    """The reference recomputes the observation from the environment's state at the start of
    every chunk: after a terminal last step the next chunk acts on the reset state's
    observation, not the stale one of quirk Q1."""
    _, env, cfg, run = er_run
    hp = config.grid_hyperparameters([cfg])
    state = run.init(jax.random.split(jax.random.PRNGKey(6), cfg["num_seeds"]))
    expected = np.asarray(jax.vmap(jax.vmap(env.get_observation))(state.env_state))
    stale = state._replace(obs=jnp.zeros_like(state.obs))  # not the environment's observation
    state, _ = run.chunk(stale, jnp.int32(0), jnp.bool_(False), hp)
    first = np.unpackbits(np.asarray(state.buffer.storage.obs[:, :, 0]), axis=-1)
    np.testing.assert_array_equal(first[..., : expected.shape[-1]], expected)


def test_without_a_target_network_bootstrap_parameters_are_set_once_per_step():
    """With use_target false and several updates per step, the reference sets the bootstrap
    parameters once per environment step and keeps them for all of that step's updates."""

    def update(learner, buffer, key, hp):  # each update adds 1 and reports its bootstrap
        return learner._replace(q_params=learner.q_params + 1.0), {"target": learner.q_target}

    agent = loop.Agent(None, None, None, update, None, diagnostics=("target",))
    learner = agents.Learner(q_params=jnp.float32(10.0), q_target=jnp.float32(-5.0), q_opt=None)
    cfg = {"use_target": False, "updates_per_step": 3}
    learner, diagnostics = loop.train_learner(agent, cfg, learner, None, 0, jax.random.key(0), {})
    assert float(learner.q_params) == 13.0
    # all three updates bootstrapped from the step's starting parameters (mean of 10, 10, 10),
    # not from the parameters of the update before (10, 11, 12)
    assert diagnostics.tolist() == [10.0]
