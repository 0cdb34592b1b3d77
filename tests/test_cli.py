"""The command line of every `train_*.py` (`experiment.main`): flags, one-line errors with exit
status 2 before anything compiles, the files a run writes, and a killed run's `.out`."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import ROOT, SCRIPTS, assert_diagnostics, load_pickle, run_script, tiny_config

import train_ER_DQN
from training import compilation, experiment


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
