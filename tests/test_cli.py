"""The command line of every `train_*.py` (`training/cli.py`): flags, one-line errors with exit
status 2 before anything compiles, the files a run writes, and a killed run's `.out`."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
import pytest
from helpers import (
    PER_AGENT,
    ROOT,
    SCRIPTS,
    agent_type,
    assert_diagnostics,
    definition,
    load_pickle,
    run_script,
    tiny_config,
)

import environments
import train_ER_DQN
from agent_registry import AGENTS
from training import cli, compilation, config


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


class Expected(NamedTuple):
    """What an agent's `.out` and `.params` hold after a tiny run on a 3 x 3 ProcMaze."""

    q_inputs: int  # the Q network's input width
    model: dict  # `.params["model"]`'s parts: part -> (haiku module, first layer's input width)
    model_terms: tuple  # the model loss terms in `.out`, beside the Q diagnostics


OBS = environments.ProcMaze(grid_size=3).observation_size
LATENT_MODEL = {
    "reward": ("reward_function", None),
    "termination": ("termination_function", None),
    "phi": ("phi_function", None),
    "next_phi": ("next_phi_function", None),
    "obs": ("obs_function", None),
}
LATENT_TERMS = ("kl_posterior", "kl_prior", "posterior_entropy", "reward", "termination")
EXPECTED = {
    "ER": Expected(OBS, {}, ()),
    "perfect_model": Expected(OBS, {}, ()),
    "simple_model": Expected(
        OBS,
        {
            "reward": ("reward_function", OBS + 5),
            "termination": ("termination_function", OBS + 5),
            "next_obs": ("next_obs_function", OBS + 5),
        },
        ("reward", "termination", "obs"),
    ),
    "categorical_latent": Expected(4 * 4, LATENT_MODEL, (*LATENT_TERMS, "reconstruction")),
    "gaussian_latent": Expected(4, LATENT_MODEL, (*LATENT_TERMS, "reconstruction")),
}
# The gaussian run also exercises the switches that the shipped configs leave off.
SWITCHES = {
    "gaussian_latent": {
        "double_DQN": True,
        "seperate_rollout_batch_size": True,
        "rollout_batch_size": 5,
    }
}
SEED = 7


def cli_config(name: str) -> dict:
    return tiny_config(name, **SWITCHES.get(name, {}))


@pytest.fixture(scope="module")
def cli_runs(request, tmp_path_factory):
    """The selected agents' CLI runs, two at a time (each is mostly single-threaded
    compilation): name -> (completed process, output prefix). Every agent's, unless the
    session selected some of `test_cli_writes_out_and_params`."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_cli_writes_out_and_params"
    ]
    names = selected or list(AGENTS)
    tmp = tmp_path_factory.mktemp("cli_runs")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_script, name, cli_config(name), tmp, SEED, name)
            for name in dict.fromkeys(names)
        }
        return {name: future.result() for name, future in futures.items()}


def test_every_registered_agent_has_a_tiny_config_and_expected_outputs():
    assert list(PER_AGENT) == list(AGENTS) and list(EXPECTED) == list(AGENTS)


@pytest.mark.parametrize("name", list(AGENTS))
def test_cli_writes_out_and_params(name, cli_runs):
    process, prefix = cli_runs[name]
    assert process.returncode == 0, process.stderr[-3000:]
    raw, expected = cli_config(name), EXPECTED[name]
    out = load_pickle(prefix + ".out")
    assert out["config"].agent_type == agent_type(name) and out["config"].seed == SEED
    # every key as given, and the defaults filled in
    for key, value in config.validate_config(raw, definition(name)).items():
        assert getattr(out["config"], key) == value, key
    assert out["metrics"]["eval_times"] == [0, 50, 100, 150]
    assert len(out["metrics"]["reward_rates"]) == 4
    for rates in out["metrics"]["reward_rates"]:
        assert isinstance(rates, np.ndarray) and rates.shape == (raw["num_seeds"],)
        assert np.all(rates <= 0) and np.all(rates >= -raw["eval_steps"])
    assert_diagnostics(out, expected.model_terms)

    params = load_pickle(prefix + ".params")
    assert set(params) == ({"Q", "model"} if expected.model else {"Q"})
    assert all(len(params[part]) == raw["num_seeds"] for part in params)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    for q in params["Q"]:
        assert set(q) == {"q_function/linear", "q_function/linear_1"}
        assert q["q_function/linear"]["w"].shape == (expected.q_inputs, 16)
        assert q["q_function/linear_1"]["w"].shape == (16, 5)
    for model in params.get("model", []):
        assert set(model) == set(expected.model)
        for part, (module, inputs) in expected.model.items():
            assert all(key.startswith(module + "/linear") for key in model[part]), part
            if inputs is not None:
                assert set(model[part]) == {f"{module}/linear", f"{module}/linear_1"}
                assert model[part][f"{module}/linear"]["w"].shape == (inputs, 16)
    if "next_obs" in expected.model:
        for model in params["model"]:
            assert model["next_obs"]["next_obs_function/linear_1"]["w"].shape == (16, OBS)
    # the seeds are different runs: every parameter differs between them
    first, second = ({part: params[part][seed] for part in params} for seed in (0, 1))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        if a.ndim == 2:  # weights (a bias may start at zero in both)
            assert not np.array_equal(a, b)


def test_outputs_load_without_jax(cli_runs):
    """Every agent's `.out` and `.params`, read in a process where importing jax fails."""
    prefixes = [prefix for _, prefix in cli_runs.values()]
    code = (
        "import pickle, sys\n"
        "sys.modules['jax'] = None  # importing jax now fails\n"
        f"for prefix in {prefixes!r}:\n"
        "    out = pickle.load(open(prefix + '.out', 'rb'))\n"
        "    params = pickle.load(open(prefix + '.params', 'rb'))\n"
        "    print(len(out['metrics']['reward_rates']), len(params['Q']))\n"
    )
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["4", "2"] * len(prefixes)


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


def main_er(tmp_path, capsys, monkeypatch, text: str, *flags) -> tuple[int, list[str]]:
    """`train_ER_DQN.py --config=<text> --output=<tmp>/bad ...` in this process (as the CLI,
    without the seconds of a new interpreter). Returns (exit status, stderr lines)."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    path = tmp_path / "bad.json"
    path.write_text(text)
    argv = [f"--config={path}", f"--output={tmp_path / 'bad'}", *flags]
    code = 0
    try:
        cli.main(train_ER_DQN.DEFINITION, argv)
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


def test_cli_logs_the_memory_it_needs_creates_the_output_folder_and_refuses_an_unwritable_one(
    tmp_path, capsys, monkeypatch
):
    raw = json.dumps(tiny_config("ER", num_steps=50, training_start_time=0, save_params=False))
    code, lines = main_er(tmp_path, capsys, monkeypatch, raw, "--output", str(tmp_path / "new/run"))
    assert code == 0 and (tmp_path / "new" / "run.out").exists()
    # the start-up log's first line: the memory the run needs
    assert lines[0].startswith("memory: training state 0.00 GB (replay buffers 0.00 GB), metrics ")
    assert ", the compiled loop's temporaries 0.00 GB for 2 seeds;" in lines[0]
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, lines = main_er(tmp_path, capsys, monkeypatch, raw, f"--output={blocker / 'run'}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("--output: cannot write")


# ------------------------------------------------------------------------------------------
# Two behaviours of the reference's loop
# ------------------------------------------------------------------------------------------
