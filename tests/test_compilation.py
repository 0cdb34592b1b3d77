"""Compiling a run (`training/compilation.py`): one compiled chunk for every train flag, time and
hyperparameter, the pairs sharded over devices, matmul precision, XLA's CPU flags, and a
compilation cache that cannot be written."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, SCRIPTS, definition, load_pickle, tiny_config, train_in_process

import environments
import train_ER_DQN
from training import compilation, config, results


def test_chunk_compiles_once_for_train_flag_times_and_hyperparameters(er_run):
    _, _, cfg, run = er_run
    hp = config.grid_hyperparameters([cfg])
    state = run.init(jax.random.split(jax.random.PRNGKey(0), cfg["num_seeds"]))
    state, _ = run.chunk(state, jnp.int32(0), jnp.bool_(False), hp)
    state, _ = run.chunk(state, jnp.int32(50), jnp.bool_(True), hp)
    hp2 = {**hp, "alpha_adam": jnp.array([3e-4]), "softmax_temp": jnp.array([2.0])}
    state, _ = run.chunk(state, jnp.int32(100), jnp.bool_(True), hp2)
    assert run.chunk._cache_size() == 1


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
from helpers import definition, tiny_config
import environments, train_ER_DQN
from training import compilation, config
assert len(jax.devices()) == 4
raw = tiny_config("ER", num_seeds=2, alpha_adam=[1e-3, 3e-3], softmax_temp=[0.1, 0.4])
cfg = config.validate_config(raw, definition("ER"))
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
            "PYTHONPATH": os.path.join(ROOT, "tests"),
            "JAX_COMPILATION_CACHE_DIR": "",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == ["1 (1, 1)", "4 (2, 2)", "equal"]


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


def chunk_program_text(raw: dict) -> str:
    """The StableHLO of a config's compiled chunk."""
    cfg = config.validate_config(raw, definition("ER"))
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
    a, _ = train_in_process("ER", raw, tmp_path, output="default")
    float32_raw = {**raw, "matmul_precision": "float32"}
    b, _ = train_in_process("ER", float32_raw, tmp_path, output="float32")
    assert results.out_config(a)["matmul_precision"] == "default"
    assert results.out_config(b)["matmul_precision"] == "float32"
    jax.tree.map(np.testing.assert_array_equal, a["metrics"], b["metrics"])


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
