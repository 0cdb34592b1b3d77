"""Figure 4 from one command: the 30 cell configs against the seed README's table, and the
driver `reproduce_figure4.py` end to end at --quick sizes (inline and submitit's local
executor), its figure with missing cells, its projection arithmetic and its flag errors."""

import glob
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import threading
import time
import types

import numpy as np
import pytest
from helpers import QUICK_PIPELINE, ROOT, definition, run_quick_driver, tiny_config

import reproduce_figure4 as r4
from agent_registry import AGENTS
from figure4 import estimate, executors, figure, jobs
from figure4 import plan as f4
from figure4.plan import PRESETS, Cell
from training import checkpoint, config, experiment, provenance, results
from training.experiment import RunError

SEEDS = os.path.join(ROOT, "..", "shared", "seeds")

# --------------------------------------------------------------------------------------------
# The table, parsed from the reference README itself
# --------------------------------------------------------------------------------------------

HEADER = "Agent Environment Data Regime Step-Size Temperature"
# The README's table is flattened to one line per row; a row names its agent and environment
# only where they change: "Simple Model ProcMaze High Data 0.0002 0.8", "Low Data 2.5e-05 0.4",
# "ButtonGrid High Data 0.0002 1.6".
ROW = re.compile(r"^(?P<lead>.*?)\s*(?P<regime>High|Low) Data\s+(?P<step>\S+)\s+(?P<temp>\S+)$")
AGENT_NAMES = {
    "ER": "ER",
    "Perfect Model": "perfect_model",
    "Simple Model": "simple_model",
    "Categorical Latent Model": "categorical_latent",
    "Gaussian Latent Model": "gaussian_latent",
}
# design §2: the table's "Step-Size" is alpha_adam for ER and perfect model, Q_alpha otherwise.
STEP_KEY = {
    "ER": "alpha_adam",
    "perfect_model": "alpha_adam",
    "simple_model": "Q_alpha",
    "categorical_latent": "Q_alpha",
    "gaussian_latent": "Q_alpha",
}
SHIPPED = {
    "ER": "ER.json",
    "perfect_model": "perfect_model.json",
    "simple_model": "simple_model.json",
    "categorical_latent": "categorical_latent_model.json",
    "gaussian_latent": "gaussian_latent_model.json",
}
LOW = {
    "target_update_frequency": 10,
    "updates_per_step": 10,
    "num_steps": 100000,
    "eval_frequency": 50,
}
HIGH = {
    "target_update_frequency": 100,
    "updates_per_step": 1,
    "num_steps": 1000000,
    "eval_frequency": 500,
}


def parse_table(text: str) -> dict:
    """(agent, environment, regime) -> (step size, temperature), read row by row; the agent
    is the words before the environment (one word), both carried down to later rows."""
    lines = [line.strip() for line in text.splitlines()]
    table, agent, env = {}, None, None
    for line in lines[lines.index(HEADER) + 1 :]:
        match = ROW.match(line)
        if not match:
            break  # the first line that is not a row ends the table
        lead = match["lead"].split()
        if lead:
            env = lead[-1]
        if len(lead) > 1:
            agent = AGENT_NAMES[" ".join(lead[:-1])]
        cell = (agent, env, match["regime"].lower())
        assert cell not in table, f"row {line!r} repeats {cell}"
        table[cell] = (float(match["step"]), float(match["temp"]))
    return table


def seed_table() -> dict:
    if not os.path.isdir(SEEDS):
        pytest.skip(f"no seed folder {SEEDS}")
    for path in sorted(glob.glob(os.path.join(SEEDS, "*.txt"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if HEADER in [line.strip() for line in text.splitlines()]:
            return parse_table(text)
    raise AssertionError(f"no seed file in {SEEDS} holds the Figure 4 table")


def load_json(path):
    with open(path) as f:
        return json.load(f)


def test_parser_reads_flattened_rows():
    text = "\n".join(
        [
            HEADER,
            "Simple Model ProcMaze High Data 0.0002 0.8",
            "Low Data 2.5e-05 0.4",
            "ButtonGrid High Data 0.0002 1.6",
            "ER PanFlute Low Data 3.125e-06 0.8",
            "",
        ]
    )
    assert parse_table(text) == {
        ("simple_model", "ProcMaze", "high"): (0.0002, 0.8),
        ("simple_model", "ProcMaze", "low"): (2.5e-05, 0.4),
        ("simple_model", "ButtonGrid", "high"): (0.0002, 1.6),
        ("ER", "PanFlute", "low"): (3.125e-06, 0.8),
    }


def assert_cell_of_the_table(raw: dict, cell: tuple, table: dict, sizes: dict | None = None):
    """`raw` is the cell's config as the seed README's table and design §2 make it: the agent's
    shipped config, moved to the cell, at the table's values; `sizes` name the keys a preset
    changes, and their values."""
    agent, env, regime = cell
    step, temp = table[cell]
    name, sizes = f"{agent}_{env}_{regime}", sizes or {}
    shipped = load_json(os.path.join(ROOT, "configs", SHIPPED[agent]))
    assert raw[STEP_KEY[agent]] == step, name
    assert raw["softmax_temp"] == temp, name
    assert raw["environment"] == env, name
    assert raw["episodic_env"] is (env == "ProcMaze"), name
    assert raw["env_config"] == ({"grid_size": 4} if env == "ProcMaze" else {}), name
    for key, value in (LOW if regime == "low" else HIGH).items():
        expected = sizes.get(key, value)
        assert raw.get(key, 1 if key == "updates_per_step" else None) == expected, (name, key)
    if STEP_KEY[agent] == "Q_alpha":
        assert raw["model_alpha"] == 2e-4, name
        assert "alpha_adam" not in raw, name
    else:
        assert "Q_alpha" not in raw and "model_alpha" not in raw, name
    cell_keys = {STEP_KEY[agent], "softmax_temp", "environment", "episodic_env", "env_config"}
    rest = set(raw) - cell_keys - set(LOW)
    assert {k: raw[k] for k in rest} == {k: sizes.get(k, shipped[k]) for k in rest}, name
    assert set(shipped) - set(raw) == set(), name


def test_committed_configs_match_the_seed_readme_table():
    table = seed_table()
    assert len(table) == 30
    assert {Cell(*cell) for cell in table} == set(f4.all_cells())
    for agent, env, regime in table:
        raw = load_json(os.path.join(ROOT, "configs", "figure4", f"{agent}_{env}_{regime}.json"))
        assert_cell_of_the_table(raw, (agent, env, regime), table)


# The laptop preset's size keys, as the README documents them.
LAPTOP_SIZES = {"num_seeds": 8, "num_steps": 15000, "eval_frequency": 250}


def test_the_laptop_preset_is_the_tables_cells_but_its_size_keys():
    table = seed_table()
    args = r4.resolve(r4.build_parser().parse_args(["--laptop"]))
    assert (args.envs, args.regimes, args.stages) == (["PanFlute"], ["high"], ["final", "plot"])
    assert args.agents == list(AGENTS) and args.plan.out_dir.endswith("figure4_laptop")
    for agent in args.agents:
        job = f4.final_job(Cell(agent, "PanFlute", "high"), args.plan)
        assert_cell_of_the_table(job.raw, (agent, "PanFlute", "high"), table, LAPTOP_SIZES)
        committed = load_json(f4.config_path(Cell(agent, "PanFlute", "high")))
        changed = {key for key in committed if job.raw[key] != committed[key]}
        assert changed == set(LAPTOP_SIZES) and job.raw.keys() == committed.keys()


def test_committed_configs_are_what_the_generator_writes():
    generated = f4.generate()
    committed = sorted(glob.glob(os.path.join(ROOT, "configs", "figure4", "*.json")))
    assert committed == sorted(generated)
    for path, text in generated.items():
        with open(path) as f:
            assert f.read() == text, f"{path} differs: run python -m figure4.plan"


def test_every_stage_config_validates_full_and_quick():
    """The committed configs, and the tune grids and final runs built from them (full size and
    --quick), all pass the run's own validation."""
    for quick in (False, True):
        the_plan = r4.resolve(r4.build_parser().parse_args(["--quick"] if quick else [])).plan
        for cell in f4.all_cells():
            definition = AGENTS[cell.agent].definition
            config.validate_config(load_json(f4.config_path(cell)), definition)
            for job in (f4.tune_job(cell, the_plan), f4.final_job(cell, the_plan)):
                config.validate_config(job.raw, definition)
            assert len(f4.tune_job(cell, the_plan).outputs) == (4 if quick else 110)


def test_default_grid_holds_every_table_value():
    values = [v for agent in f4.TABLE.values() for env in agent.values() for v in env.values()]
    for step, temp in values:
        assert any(np.isclose(step, s, rtol=1e-12) for s in f4.STEP_SIZES), step
        assert any(np.isclose(temp, t, rtol=1e-12) for t in f4.TEMPERATURES), temp
    assert (len(f4.STEP_SIZES), len(f4.TEMPERATURES)) == (10, 11)
    assert f4.STEP_SIZES[-1] == pytest.approx(1.6e-3) and f4.TEMPERATURES[-1] == 12.8


# --------------------------------------------------------------------------------------------
# The driver end to end
# --------------------------------------------------------------------------------------------


def load_out(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_quick_pipeline_all_stages_then_skips_finished(tmp_path, quick_pipeline, driver_cache):
    out = tmp_path / "quick"
    shutil.copytree(quick_pipeline[0], out)  # the session's run, which other tests read too
    first = quick_pipeline[1]

    tune_outs = sorted(glob.glob(str(out / "tune" / "*.out")))
    assert len(tune_outs) == 8  # 2 regimes x 2 step sizes x 2 temperatures
    assert not glob.glob(str(out / "tune" / "*.ckpt"))  # a finished grid's state is dropped
    assert str(out / "tune" / "ER_ProcMaze_low_alpha_adam=0.0008_softmax_temp=0.1.out") in tune_outs
    for regime in ("high", "low"):
        selected = load_json(out / "selected" / f"ER_ProcMaze_{regime}.json")
        cfg = config.validate_config(selected, definition("ER"))
        assert cfg["alpha_adam"] in PRESETS["quick"].step_sizes
        assert cfg["softmax_temp"] in PRESETS["quick"].temperatures
        assert cfg["num_seeds"] == 30  # the real-size config; final shrinks it under --quick
        record = load_out(out / "final_selected" / f"ER_ProcMaze_{regime}.out")
        assert len(record["metrics"]["eval_times"]) == 10
        assert record["metrics"]["reward_rates"][0].shape == (2,)
        assert record["config"].alpha_adam == cfg["alpha_adam"]
        assert record["config"].updates_per_step == (10 if regime == "low" else 1)
        assert f"select ER_ProcMaze_{regime}: alpha_adam=" in first.stdout
    png = out / "figure4.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    outs = tune_outs + sorted(glob.glob(str(out / "final_selected" / "*.out")))
    mtimes = {path: os.stat(path).st_mtime_ns for path in outs}
    # A lost final .out: the driver counts its job as unfinished and writes it again from the
    # run's checkpoint, without training again.
    lost = out / "final_selected" / "ER_ProcMaze_low.out"
    original = lost.read_bytes()
    lost.unlink()
    flags = [*QUICK_PIPELINE, "--out-dir", str(out)]
    second, _ = run_quick_driver(*flags, cache_dir=driver_cache)
    assert "tune: 2 of 2 jobs already finished" in second.stdout
    assert "final: 1 of 2 jobs already finished" in second.stdout
    assert "final ER_ProcMaze_low: finished already: its .out written again" in second.stdout
    assert lost.read_bytes() == original
    mtimes.pop(str(lost))
    # Nothing finished was trained again: every other output is untouched.
    assert {path: os.stat(path).st_mtime_ns for path in outs if path != str(lost)} == mtimes


def test_local_executor_runs_cells_in_parallel_processes(tmp_path, driver_cache):
    out = tmp_path / "local"
    flags = ["--stage", "final", "--executor", "local", "--parallel", "2", "--out-dir", str(out)]
    flags += ["--tensorboard", str(tmp_path / "tb")]  # the jobs' curves, under stage and cell
    process, _ = run_quick_driver(*flags, cache_dir=driver_cache)
    # Both cells went to submitit in one submission, each its own process (job id = its pid).
    assert "ER_ProcMaze_high, ER_ProcMaze_low" in process.stdout
    # (submitit also keeps a literal "%j" folder for what it writes before a job has an id)
    job_dirs = [name for name in os.listdir(out / "logs" / "final") if name.isdigit()]
    assert len(job_dirs) == 2
    for job_dir in job_dirs:
        assert glob.glob(str(out / "logs" / "final" / job_dir / "*_result.pkl"))
    for regime in ("high", "low"):
        record = load_out(out / "final" / f"ER_ProcMaze_{regime}.out")
        assert len(record["metrics"]["eval_times"]) == 10
        assert record["config"].num_seeds == 2
        runs = sorted(os.listdir(tmp_path / "tb" / "final" / f"ER_ProcMaze_{regime}"))
        assert runs == ["mean", "seed_0", "seed_1"]


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    """Without a cluster: a fake srun lets submitit build its SLURM executor; the sbatch
    header it would submit carries the flags."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name in ("srun", "sbatch"):
        (fake_bin / name).write_text("#!/bin/sh\nexit 0\n")
        (fake_bin / name).chmod(0o755)
    (fake_bin / "sinfo").write_text("#!/bin/sh\necho 'gpu|16|128000|gpu:4|2-00:00:00'\n")
    (fake_bin / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    flags = ["--executor", "slurm", "--slurm-partition", "gpu", "--time", "90"]
    flags += ["--cpus-per-job", "4", "--gpus-per-job", "2", "--slurm-array-parallelism", "7"]
    args = r4.resolve(r4.build_parser().parse_args(flags))
    executor = jobs.make_executor(args.options, str(tmp_path / "logs" / "%j"))
    header = executor._executor._make_submission_file_text("CMD", "uid")
    for line in ("--partition=gpu", "--time=90", "--cpus-per-task=4", "--gpus-per-node=2"):
        assert f"#SBATCH {line}" in header
    assert executor._executor.parameters["array_parallelism"] == 7
    assert ROOT in os.environ["PYTHONPATH"].split(os.pathsep)


def test_a_failing_job_raises_so_the_other_jobs_go_on(tmp_path):
    """A job whose run cannot start raises the run's one line (the inline executor records it
    and goes on with the next cell; a submitit job's error names it too)."""
    with pytest.raises(RunError, match="config error: activation: missing required key"):
        jobs.TrainingJob()("ER", {}, str(tmp_path / "run"), 0)
    error = RuntimeError("Traceback ...\ntraining.experiment.RunError: config error: x\nlog: y")
    assert jobs.failure_line(error) == "config error: x"


class ResultLater:
    """A SLURM job's handle (what `executors.watch_jobs` reads) whose result is written later."""

    def __init__(self, folder, job_id="7"):
        self.job_id = job_id
        self.paths = types.SimpleNamespace(
            result_pickle=folder / "7_result.pkl", stderr=folder / "7_log.err"
        )

    def result(self):
        return "done"


def silent_squeue(tmp_path, monkeypatch) -> None:
    """An `squeue` that fails as it does while the controller is busy or restarting."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "squeue").write_text(
        "#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out on send/recv operation' >&2\n"
        "exit 1\n"
    )
    (fake_bin / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")


def slurm_options(tmp_path) -> jobs.Options:
    args = r4.build_parser().parse_args(["--quick", "--out-dir", str(tmp_path), "--poll", "0.1"])
    return r4.resolve(args).options._replace(executor="slurm")


def test_a_silent_squeue_is_waited_out_not_taken_for_failed_jobs(tmp_path, monkeypatch, capsys):
    silent_squeue(tmp_path, monkeypatch)
    job = f4.final_job(Cell("ER", "ProcMaze", "high"), quick_plan(tmp_path))
    handle = ResultLater(tmp_path)
    # many looks (a job SLURM no longer listed would have ended) before the result lands
    threading.Timer(1.0, handle.paths.result_pickle.write_bytes, [b""]).start()
    watches = {job.prefix: executors.Watch(job, handle, 0)}
    options = slurm_options(tmp_path)
    assert executors.watch_jobs([job], watches, [], options, str(tmp_path)) == []
    assert capsys.readouterr().out.splitlines() == [
        "squeue: slurm_load_jobs error: Socket timed out on send/recv operation; waiting for it "
        "to answer",
        "final: 0 done, 0 running, 1 pending, 0 failed; 0.0 steps/s summed over running jobs",
        "final ER_ProcMaze_high: done",
        "final: 1 done, 0 running, 0 pending, 0 failed; 0.0 steps/s summed over running jobs",
    ]


def test_a_restarted_driver_submits_nothing_while_squeue_is_silent(tmp_path, monkeypatch, capsys):
    """It waits for squeue to answer (submitting could run a job twice), then watches the job
    an earlier driver submitted."""
    silent_squeue(tmp_path, monkeypatch)
    job = f4.final_job(Cell("ER", "ProcMaze", "high"), quick_plan(tmp_path))
    path = jobs.records_path(str(tmp_path), "final")
    jobs.write_records(path, {job.prefix: {"job_id": "7", "folder": str(tmp_path)}})
    answering = "#!/bin/sh\necho '7|RUNNING|2026-12-03T11:00:00'\n"
    squeue = tmp_path / "bin" / "squeue"
    threading.Timer(1.0, squeue.write_text, [answering]).start()
    watches, to_submit = executors.reattach([job], slurm_options(tmp_path), str(tmp_path))
    assert to_submit == [] and watches[job.prefix].handle.job_id == "7"
    assert capsys.readouterr().out.splitlines() == [
        "squeue: slurm_load_jobs error: Socket timed out on send/recv operation; waiting for it "
        "to answer before submitting",
        "final ER_ProcMaze_high: job 7 of an earlier driver is RUNNING: watching it, not "
        "submitting it again",
    ]


# --------------------------------------------------------------------------------------------
# plot with missing cells
# --------------------------------------------------------------------------------------------


def write_fake_out(path, num_evaluations=40, num_seeds=3, diverged_seed=None):
    rng = np.random.default_rng(0)
    rates = [rng.normal(-10 + i / 4, 1, num_seeds) for i in range(num_evaluations)]
    diverged = np.zeros(num_seeds, bool)
    if diverged_seed is not None:
        diverged[diverged_seed] = True
        for row in rates[num_evaluations // 2 :]:
            row[diverged_seed] = -np.inf
    record = {
        "config": types.SimpleNamespace(num_steps=num_evaluations * 10, eval_frequency=10),
        "metrics": {
            "reward_rates": rates,
            "eval_times": [10 * i for i in range(num_evaluations)],
            "diverged": [diverged] * num_evaluations,
        },
    }
    with open(path, "wb") as f:
        pickle.dump(record, f)


def test_plot_draws_missing_cells_as_absent(tmp_path, capsys):
    final = tmp_path / "final"
    final.mkdir()
    write_fake_out(final / "ER_ProcMaze_high.out")
    write_fake_out(final / "perfect_model_ProcMaze_high.out", diverged_seed=1)
    (final / "simple_model_PanFlute_low.out").write_bytes(b"not a pickle")
    fig = figure.draw_figure(str(final), list(AGENTS), list(f4.ENVIRONMENTS), list(f4.REGIMES))
    err = capsys.readouterr().err
    assert "simple_model_PanFlute_low.out" in err  # said, then drawn as absent
    assert "perfect_model_ProcMaze_high.out" in err  # its diverged seed is left out, and said
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert len(panels) == 6
    lines = panels["ProcMaze, high data"].get_lines()
    assert [line.get_color() for line in lines] == ["C0", "C1"]  # ER, perfect model
    assert all(np.isfinite(line.get_ydata()).all() for line in lines)
    for title, ax in panels.items():
        texts = [t.get_text() for t in ax.texts]
        assert texts == ([] if title == "ProcMaze, high data" else ["no runs yet"])
        assert ax.get_xlabel() == "environment steps"
    assert panels["ProcMaze, low data"].get_ylabel() == "return"
    assert panels["PanFlute, low data"].get_ylabel() == "return (average reward per step)"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["ER", "perfect model"]

    assert r4.main(["--stage", "plot", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "figure4.png").read_bytes()[:4] == b"\x89PNG"
    assert "plot: 2 curves" in capsys.readouterr().out


def test_plot_of_nothing_is_a_figure_of_empty_panels(tmp_path):
    assert r4.main(["--stage", "plot", "--out-dir", str(tmp_path), "--envs", "PanFlute"]) == 0
    assert (tmp_path / "figure4.png").exists()


# --------------------------------------------------------------------------------------------
# The projection and the flags
# --------------------------------------------------------------------------------------------


def test_job_seconds_counts_updates_evaluations_and_seeds():
    m = estimate.Measurement(seeds=2, compile_s=5.0, act_s=0.001, update_s=0.01, eval_s=0.1, raw={})
    high = {"num_steps": 1000, "training_start_time": 0, "eval_frequency": 100}
    # per step of 2 seeds: 1 ms acting + 10 ms per update; 10 evaluations of 0.1 s
    assert estimate.job_seconds(m, high, seeds=2) == pytest.approx(5 + 1 + 10 + 1)
    assert estimate.job_seconds(m, high, seeds=4) == pytest.approx(5 + 2 * 12)
    low = {**high, "updates_per_step": 10}
    assert estimate.job_seconds(m, low, seeds=2) == pytest.approx(5 + 1 + 100 + 1)
    assert estimate.job_seconds(m, high, seeds=2, update_scale=2.0) == pytest.approx(5 + 1 + 20 + 1)
    late = {**high, "training_start_time": 500}
    assert estimate.job_seconds(m, late, seeds=2) == pytest.approx(5 + 1 + 5 + 1)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--agents", "nonsense"], "--agents"),
        (["--envs", "Atari"], "--envs"),
        (["--tune-seeds", "0"], "--tune-seeds"),
        (["--seed", "4294967296"], "--seed"),
        (["--step-sizes", "-1e-4"], "--step-sizes"),
        (["--temperatures", "0.1", "0.1"], "--temperatures"),
        (["--slurm-partition", "gpu"], "--slurm-partition"),
        (["--stage", "final", "--hyperparameters", "selected"], "--hyperparameters"),
        (["--executor", "slurm"], "--executor"),
    ],
)
def test_bad_flag_is_one_line_naming_it_exit_2(flags, named, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, whatever the machine has
    with pytest.raises(SystemExit) as exit_info:
        r4.main([*flags, "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert named in err


def test_update_flops_follow_the_observation_size():
    """The projection carries ProcMaze's measured update time to the other environments by
    FLOPs: ButtonGrid's observation (300 bits) is larger than ProcMaze's (64), PanFlute's (15)
    smaller."""
    flops = {
        env: estimate.update_flops(
            definition("ER"), load_json(f4.config_path(Cell("ER", env, "high")))
        )
        for env in f4.ENVIRONMENTS
    }
    assert flops["ButtonGrid"] > flops["ProcMaze"] > flops["PanFlute"] > 0


def test_estimate_measures_and_prints_the_table(capsys):
    flags = ["--estimate", "--quick", "--agents", "ER", "--envs", "ProcMaze", "PanFlute"]
    assert r4.main(flags) == 0
    out = capsys.readouterr().out
    assert "ER: compile" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"tune", "select", "final", "plot"}
    tune = [cell.strip() for cell in rows["tune"].split("|")[1:-1]]
    final = [cell.strip() for cell in rows["final"].split("|")[1:-1]]
    assert tune[1] == final[1] == "4"  # 1 agent x 2 environments x 2 regimes
    # env-steps: tune 2 x 2 points x 2 seeds x 200 steps per job, final 2 seeds x 200 steps
    assert float(tune[2]) == 4 * 8 * 200 and float(final[2]) == 4 * 2 * 200
    # Hours at three decimals: compiling dominates at --quick sizes, so the two may print alike
    assert 0 < float(final[3]) <= float(tune[3])
    assert "This fits this machine" in out


# --------------------------------------------------------------------------------------------
# Outputs of another version, an unwritable --out-dir, a stopped driver
# --------------------------------------------------------------------------------------------


def quick_plan(out_dir) -> f4.Plan:
    return r4.resolve(r4.build_parser().parse_args(["--quick", "--out-dir", str(out_dir)])).plan


def test_outputs_of_another_version_are_listed_not_counted(tmp_path, capsys):
    """A finished `.out` written by another version of the code stops the driver with one line
    listing it; --other-versions keep counts it as finished."""
    cell = Cell("ER", "ProcMaze", "high")
    output = f4.final_job(cell, quick_plan(tmp_path)).outputs[0]
    raw = {key: value for key, value in output.expected.items() if key != "seed"}
    cfg = config.validate_config(raw, definition("ER"))
    evaluations = cfg["num_steps"] // cfg["eval_frequency"]
    history = {"reward_rates": [np.zeros((1, 2), np.float32)] * evaluations}
    record = results.out_record(
        {**cfg, "agent_type": "ER", "seed": 0},
        list(range(0, cfg["num_steps"], cfg["eval_frequency"])),
        history,
        0,
        {**provenance.versions(), "project": "0123456789abcdef", "device": "cpu"},
    )
    os.makedirs(os.path.dirname(output.path))
    results.write_out(output.path, record)
    flags = ["--quick", "--stage", "final", "--agents", "ER", "--envs", "ProcMaze"]
    flags += ["--regimes", "high", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        r4.main(flags)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "final: 1 jobs' outputs were written by another version" in line
    assert "(ER_ProcMaze_high)" in line and "--other-versions keep" in line
    assert r4.main([*flags, "--other-versions", "keep"]) == 0
    assert "final: 1 of 1 jobs already finished" in capsys.readouterr().out
    assert plan_state(output) == f4.OTHER_VERSION


def plan_state(output) -> str:
    return f4.output_state(output, provenance.versions())


def test_a_read_only_out_dir_is_one_line_before_any_job(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)])
    if done.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        with pytest.raises(SystemExit) as exit_info:
            r4.main(["--quick", "--stage", "final", "--out-dir", str(folder / "runs")])
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"reproduce_figure4.py: error: --out-dir: cannot write {folder / 'runs'}: "
        "Read-only file system"
    )


def test_a_file_the_driver_cannot_write_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    job = f4.final_job(Cell("ER", "ProcMaze", "high"), quick_plan(tmp_path))
    os.makedirs(os.path.join(job.config_path, "taken"))  # a folder where its config goes
    monkeypatch.setattr(executors, "run_jobs", lambda *a: pytest.fail("a job ran"))
    flags = ["--quick", "--stage", "final", "--agents", "ER", "--envs", "ProcMaze"]
    with pytest.raises(SystemExit) as exit_info:
        r4.main([*flags, "--regimes", "high", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"reproduce_figure4.py: cannot write {job.config_path}: ")
    assert sorted(os.listdir(os.path.dirname(job.config_path))) == [
        os.path.basename(job.config_path)  # no temporary file left beside it
    ]


def test_local_jobs_stop_with_the_driver_and_checkpoint(tmp_path, monkeypatch):
    """SIGTERM to a driver running local jobs: each job's run writes its checkpoint at its
    chunk's end and exits, then the driver; no job process is left behind, and the job goes on
    from its checkpoint when run again."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    raw = tiny_config("ER", num_steps=40000, eval_frequency=100, training_start_time=0)
    prefix = str(tmp_path / "final" / "ER_ProcMaze_high")
    job = f4.Job("final", Cell("ER", "ProcMaze", "high"), raw, {}, prefix + ".json", prefix, ())
    options = jobs.Options("local", 0, 1, None, 0, 1, None, None, 1, 300, 1.0, False)

    def stop_the_driver_once_training():
        deadline = time.time() + 300
        while not os.path.exists(prefix + ".out") and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_the_driver_once_training, daemon=True).start()
    with pytest.raises(jobs.DriverStoppedError) as info:
        executors.run_jobs([job], options, str(tmp_path))
    assert "stopped 1 local jobs, each after writing its checkpoint" in str(info.value)
    (folder,) = [name for name in os.listdir(tmp_path / "logs" / "final") if name.isdigit()]
    with pytest.raises(ProcessLookupError):
        os.kill(int(folder), 0)  # the job's controller is gone, and with it the run
    log = (tmp_path / "logs" / "final" / folder / f"{folder}_0_log.err").read_text()
    assert "stopped by SIGTERM at step" in log
    setup = experiment.prepare(AGENTS["ER"].definition, raw)
    restored = checkpoint.load(prefix + ".ckpt", setup.cfg, setup.shapes, setup.provenance)
    assert 0 < restored.progress.chunks_done < 400


def test_the_laptop_preset_scaled_down_runs_its_stages_and_ranks_the_agents(
    tmp_path, capsys, monkeypatch
):
    """The preset's own stages (final, plot) for two agents at toy sizes, then the ranking."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    flags = ["--laptop", "--agents", "ER", "perfect_model", "--out-dir", str(tmp_path)]
    args = r4.resolve(r4.build_parser().parse_args(flags))
    laptop = args.plan.preset
    toy = laptop._replace(sizes={**PRESETS["quick"].sizes, **{"num_steps": 400, "num_seeds": 3}})
    args.plan = args.plan._replace(preset=toy)
    r4.run(args)
    out = capsys.readouterr().out
    assert "final ER_PanFlute_high: done" in out and "plot: 2 curves" in out
    assert (tmp_path / "figure4.png").read_bytes()[:4] == b"\x89PNG"
    ranking = out[out.index("PanFlute, high data: area under the curve") :].splitlines()
    assert ranking[1].startswith("  1. ") and ranking[2].startswith("  2. ")
    assert {ranking[1].split(":")[0][5:], ranking[2].split(":")[0][5:]} == {"ER", "perfect model"}
    assert " over 3 seeds" in ranking[1] and ranking[3].startswith("  beyond their intervals: ")
    scores = figure.panel_scores(
        str(tmp_path / "final"), ["ER", "perfect_model"], "PanFlute", "high"
    )
    assert [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)
    assert all(s.low <= s.score <= s.high for s in scores)
