"""What the tests share, other than fixtures (those are in `conftest.py`): tiny configs of every
agent of the registry, training one (as a user would, through its script, or in this process),
checks of a `.out` record, the score of a random policy under the agents' evaluation, fake
`.out` files, running the scripts that read them, a small checkpoint and a small filesystem."""

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
import environments
from agent_registry import AGENTS
from training import checkpoint, cli, config, loop
from training.definition import AgentDefinition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The shipped hyperparameters of design §2, shrunk: 1 hidden layer of 16 units, 2 seeds, short runs.
BASE = {
    "num_hidden_layers": 1,
    "num_hidden_units": 16,
    "activation": "elu",
    "b1_adam": 0.9,
    "b2_adam": 0.99,
    "eps_adam": 1e-5,
    "wd_adam": 1e-6,
    "exploration_strat": "softmax",
    "num_seeds": 2,
    "target_update_frequency": 50,
    "use_target": True,
    "buffer_size": 500,
    "num_steps": 200,
    "gamma": 0.9,
    "training_start_time": 50,
    "eval_frequency": 50,
    "eval_steps": 20,
    "eval_batch_size": 4,
    "save_params": True,
    "save_frequency": 100,
    "environment": "ProcMaze",
    "episodic_env": True,
    "env_config": {"grid_size": 3},
}


def shipped_settings(name: str, keys) -> dict:
    """The values of `keys` in the registry's agent `name`'s shipped config (those it has)."""
    shipped = AGENTS[name].shipped()
    return {key: shipped[key] for key in keys if key in shipped}


# The latent agents' tiny configs take their latent settings from the shipped configs.
LATENT_SETTINGS = ("latent_type", "min_std", "std_act", "binary_obs", "KL_prior_weight")
LATENT = {
    "Q_alpha": 1e-3,
    "model_alpha": 1e-3,
    "softmax_temp": 1.6,
    "batch_size": 8,
    "rollout_length": 4,
    "KL_posterior_weight": 0.2,
    "posterior_entropy_weight": 0.0,
    "reward_weight": 1.0,
    "termination_weight": 1.0,
    "obs_prediction_weight": 1.0,
    "num_features": 4,
    "feature_width": 4,
}
# registry name -> what its tiny config adds to BASE
PER_AGENT = {
    "ER": {"alpha_adam": 1e-3, "softmax_temp": 0.1, "batch_size": 32},
    "perfect_model": {
        "alpha_adam": 1e-3,
        "softmax_temp": 0.4,
        "batch_size": 8,
        "rollout_length": 4,
    },
    "simple_model": {
        "Q_alpha": 1e-3,
        "model_alpha": 1e-3,
        "softmax_temp": 0.8,
        "batch_size": 8,
        "rollout_length": 4,
        "reward_weight": 1.0,
        "termination_weight": 1.0,
        "obs_prediction_weight": 1.0,
        "binary_obs": True,
    },
    "categorical_latent": {**LATENT, **shipped_settings("categorical_latent", LATENT_SETTINGS)},
    "gaussian_latent": {**LATENT, **shipped_settings("gaussian_latent", LATENT_SETTINGS)},
}
# registry name -> its training script, relative to ROOT
SCRIPTS = {name: spec.module.__name__ + ".py" for name, spec in AGENTS.items()}


def tiny_config(name: str, **overrides) -> dict:
    """A raw (unvalidated) config for the registry's agent `name` that compiles and runs in
    seconds."""
    if name not in PER_AGENT:
        raise KeyError(
            f"{name}: no tiny config in tests/helpers.PER_AGENT (it has {list(PER_AGENT)})"
        )
    return {**BASE, **PER_AGENT[name], **overrides}


def agent_type(name: str) -> str:
    """The config's `agent_type` of the registry's agent `name`."""
    return AGENTS[name].agent_type


def definition(name: str) -> AgentDefinition:
    """The registry's agent `name` as the machinery sees it (what `validate_config` takes)."""
    return AGENTS[name].definition


def run_script(name: str, raw_config: dict, tmp_path, seed: int = 0, output: str = "run"):
    """Run the training script of the registry's agent `name` as a user would. Returns
    (completed process, output prefix)."""
    config_path = tmp_path / f"{output}.json"
    config_path.write_text(json.dumps(raw_config))
    prefix = str(tmp_path / output)
    process = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, SCRIPTS[name]),
            f"--seed={seed}",
            f"--config={config_path}",
            f"--output={prefix}",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""},
    )
    return process, prefix


def train_in_process(name, raw_config, tmp_path, seed=0, output="run"):
    """Train the registry's agent `name` on `raw_config` in this process through
    `experiment.run` (no CLI). Returns (.out record, prefix)."""
    prefix = str(tmp_path / output)
    written = AGENTS[name].run(raw_config, prefix, seed=seed, quiet=True)
    (record,) = written.records
    return record, prefix


def final_and_random_scores(name, raw_config, tmp_path, last=1):
    """Train in process; return (mean greedy score of the last `last` evaluations, the score
    of a uniformly random policy under the same evaluation)."""
    record, _ = train_in_process(name, raw_config, tmp_path)
    final = float(np.mean(record["metrics"]["reward_rates"][-last:]))
    return final, random_policy_score(raw_config, name)


Q_DIAGNOSTICS = ("q_loss", "mean_abs_q")


def assert_diagnostics(out: dict, model_terms: tuple = ()) -> None:
    """The training diagnostics of a `.out` record: `q_loss`, `mean_abs_q` and, for the model
    agents, `model_loss` and `model_<term>`, each one [S] array per evaluation, NaN for chunks
    without updates (before training_start_time) and finite after; `diverged` all false."""
    cfg, metrics = out["config"], out["metrics"]
    names = Q_DIAGNOSTICS + (
        ("model_loss", *(f"model_{t}" for t in model_terms)) if model_terms else ()
    )
    assert list(metrics) == ["reward_rates", "eval_times", *names, "diverged"]
    for name in names:
        assert len(metrics[name]) == len(metrics["eval_times"]), name
        for t0, value in zip(metrics["eval_times"], metrics[name], strict=True):
            assert isinstance(value, np.ndarray) and value.shape == (cfg.num_seeds,), name
            trained = t0 >= cfg.training_start_time
            assert np.all(np.isfinite(value)) if trained else np.all(np.isnan(value)), (name, t0)
    assert not np.any(metrics["diverged"])


def headless_env() -> dict:
    """This environment without a display, as on CI: the plotting scripts must not need one."""
    env = dict(os.environ)
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND"):
        env.pop(key, None)
    return env


def run_tool(script: str, *args, cwd=None) -> subprocess.CompletedProcess:
    """Run one of the scripts that read `.out` files (`plot_metric.py`, `sweep_summary.py`) as a
    user would, without a display."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd,
        env=headless_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def random_policy_score(raw_config: dict, name: str = "ER", seed: int = 0) -> float:
    """Mean greedy-evaluation score (design §9) of a uniformly random policy, for comparison."""
    cfg = config.validate_config(raw_config, definition(name))
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    num_actions = env.num_actions()
    random_agent = agents.Agent(
        init=None,
        # argmax of i.i.d. normal values is a uniformly random action
        q_values=lambda learner, obs, key: jax.random.normal(key, (num_actions,)),
        store=None,
        update=None,
        saved_params=None,
    )
    keys = jax.random.split(jax.random.PRNGKey(seed), 16)
    scores = jax.vmap(lambda k: loop.evaluate(random_agent, env, cfg, None, k, {}))(keys)
    return float(jnp.mean(scores))


def write_fake_out(
    path, values, times=None, metric="reward_rates", agent_type="ER", extra=None, diverged=None
):
    """Write a fake `.out` file as the training scripts do: lists of numpy arrays.

    ``extra`` maps more metric names to ``(E, S)`` arrays; ``diverged`` is an ``(E, S)`` bool
    array stored as the ``'diverged'`` record (absent by default, as in older runs).
    """
    values = np.asarray(values, dtype=np.float32)
    if times is None:
        times = [500 * i for i in range(values.shape[0])]
    config = types.SimpleNamespace(
        agent_type=agent_type, seed=0, num_seeds=values.shape[1], environment="ProcMaze"
    )
    metrics = {metric: [row for row in values], "eval_times": [int(t) for t in times]}
    for name, array in (extra or {}).items():
        metrics[name] = [row for row in np.asarray(array, dtype=np.float32)]
    if diverged is not None:
        metrics["diverged"] = [row for row in np.asarray(diverged, dtype=bool)]
    with open(path, "wb") as f:
        pickle.dump({"config": config, "metrics": metrics}, f)
    return str(path)


def fake_values(num_evals, num_seeds, seed):
    rng = np.random.default_rng(seed)
    trend = -100 + 90 * (1 - np.exp(-np.arange(num_evals) / 5.0))
    return trend[:, None] + rng.normal(0, 5, size=(num_evals, num_seeds))


# --------------------------------------------------------------------------------------------
# The quick Figure 4 pipeline, run once per session by the inline executor
# --------------------------------------------------------------------------------------------

DRIVER = os.path.join(ROOT, "reproduce_figure4.py")
QUICK_PIPELINE = ["--stage", "tune", "select", "final", "plot", "--hyperparameters", "selected"]


def run_quick_driver(*flags, cache_dir):
    """`reproduce_figure4.py --quick` on ER and ProcMaze as a user runs it: (process, seconds)."""
    start = time.time()
    process = subprocess.run(
        [sys.executable, DRIVER, "--quick", "--agents", "ER", "--envs", "ProcMaze", *flags],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir},
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    return process, time.time() - start


def start_script(name: str, raw: dict, tmp_path, output: str, *flags) -> subprocess.Popen:
    """Agent `name`'s script on `raw`, writing `tmp_path/output`, started as a user would (quiet),
    its stdout and stderr piped."""
    path = tmp_path / f"{output}.json"
    path.write_text(json.dumps(raw))
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, SCRIPTS[name]), f"--config={path}", "--quiet"]
        + [f"--output={tmp_path / output}", *flags],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # One compilation cache for the runs of a test: later launches load the program.
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")},
    )


def main_in_process(name: str, tmp_path, capsys, raw: dict, *flags) -> tuple[int, list[str]]:
    """Agent `name`'s command line in this process on `raw`, quiet: (exit status, stderr lines)."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps(raw))
    code = 0
    try:
        cli.main(definition(name), [f"--config={path}", "--quiet", *flags])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err.strip().splitlines()


PROVENANCE = {"project": "abc", "jax": "0.10.2", "device": "cpu"}


def small_checkpoint(tmp_path):
    """Two generations of a small checkpoint: after chunk 1 (kept as `.prev`), after chunk 2.
    (path, config, state, state's shapes, progress)"""
    cfg = {
        **config.validate_config(tiny_config("ER"), definition("ER")),
        "agent_type": "ER",
        "seed": 0,
    }
    state = {"w": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "n": np.zeros((1, 2), np.int32)}
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    history = {"reward_rates": [np.ones((1, 2), np.float32)], "diverged": [np.zeros((1, 2), bool)]}
    path = str(tmp_path / "run.ckpt")
    checkpoint.save(path, cfg, state, checkpoint.Progress(1, 50, [0], history), PROVENANCE)
    history = {name: values * 2 for name, values in history.items()}
    progress = checkpoint.Progress(2, 100, [0, 50], history)
    checkpoint.save(path, cfg, state, progress, PROVENANCE)
    return path, cfg, state, shapes, progress


@contextlib.contextmanager
def small_filesystem(path, options: str):
    """A tmpfs mounted at `path` (root only; the test is skipped where mounting is refused)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder) -> None:
    """Write until the filesystem is full."""
    with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
