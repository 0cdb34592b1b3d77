"""The Figure 4 driver on a real one-node SLURM cluster (`scripts/start_test_cluster.sh`) when
its jobs fail: a job SLURM forgot after it was cancelled, a chunk longer than the time-limit
warning, runs killed, two drivers on one folder, and requests the cluster cannot run. The
scenarios start with the session and run beside the suite (`slurm_scenarios.py`); the
refusals are quick and run here. Skipped, with the reason, where no cluster answers."""

import os

import numpy as np
import pytest
import slurm_jobs
import slurm_scenarios
from helpers import load_pickle

import reproduce_figure4 as r4

pytestmark = pytest.mark.skipif(
    not slurm_jobs.cluster_answers(),
    reason="no SLURM cluster answers here (scripts/start_test_cluster.sh starts one)",
)
EVALUATIONS = 10  # the quick preset: 200 steps, an evaluation every 20


def uninterrupted_high(test: str) -> str:
    """The prefix of the quick ER ProcMaze high-data cell run by the inline driver, never
    interrupted (a scenario of its own, beside the suite)."""
    scenario = slurm_scenarios.result(test, slurm_scenarios.uninterrupted)
    assert scenario["run"].returncode == 0, scenario["run"].stderr[-3000:]
    return scenario["prefix"]


def assert_same_files(prefix: str, other: str) -> None:
    for suffix in (".out", ".params"):
        with open(prefix + suffix, "rb") as a, open(other + suffix, "rb") as b:
            assert a.read() == b.read(), suffix  # bit for bit


def finished(prefix: str) -> bool:
    return len(load_pickle(prefix + ".out")["metrics"]["eval_times"]) == EVALUATIONS


@pytest.mark.slurm_background
def test_a_cancelled_job_slurm_forgot_is_resumed_by_the_restarted_driver():
    """Its driver killed, its job cancelled and forgotten by SLURM (`squeue --jobs` refuses
    the id): the same command resubmits the cell, which resumes from its checkpoint."""
    scenario = slurm_scenarios.result(
        "test_a_cancelled_job_slurm_forgot_is_resumed_by_the_restarted_driver"
    )
    restart, (a_job, _) = scenario["restart"], scenario["jobs"]
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    assert f"job {a_job} of an earlier driver ended without finishing (no longer listed by " in (
        restart.stdout
    )
    assert "resumed from step " in restart.stdout
    assert "final: 1 done, 0 running, 0 pending, 0 failed" in restart.stdout
    whole = uninterrupted_high(
        "test_a_cancelled_job_slurm_forgot_is_resumed_by_the_restarted_driver"
    )
    assert_same_files(whole, slurm_scenarios.cell_prefix(scenario["a_dir"], "high"))


@pytest.mark.slurm_background
def test_a_job_cancelled_and_forgotten_between_two_looks_is_reported_not_awaited():
    """A poll longer than SLURM keeps a finished job: the cancelled job is reported at the
    driver's next look, resubmitted from its checkpoint, and the cell finishes."""
    scenario = slurm_scenarios.result(
        "test_a_job_cancelled_and_forgotten_between_two_looks_is_reported_not_awaited"
    )
    watching, (_, c_job) = scenario["watching"], scenario["jobs"]
    assert watching.returncode == 0, watching.stdout[-3000:] + watching.stderr[-3000:]
    ended = [line for line in watching.lines if f"job {c_job} ended without a result" in line.text]
    assert len(ended) == 1, watching.stdout
    assert "submitting it again to resume" in ended[0].text
    # Reported within one poll of the cancel (and a grace look), not waited on.
    assert ended[0].at - scenario["cancelled_at"] < slurm_scenarios.LONG_POLL + 30
    assert finished(slurm_scenarios.cell_prefix(scenario["c_dir"], "low"))


@pytest.mark.slurm_background
def test_a_chunk_longer_than_the_warning_still_finishes():
    """The warning comes in a chunk that outlasts it: the job ends TIMEOUT with no requeue,
    and the driver resubmits it from its last checkpoint until it is done, byte for byte the
    uninterrupted run."""
    scenario = slurm_scenarios.result("test_a_chunk_longer_than_the_warning_still_finishes")
    run = scenario["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ended without a result (TIMEOUT) at step " in run.stdout
    assert "outlasted the 5 s warning before its time limit (--signal-delay)" in run.stdout
    assert "resumed from step " in run.stdout
    whole = uninterrupted_high("test_a_chunk_longer_than_the_warning_still_finishes")
    assert_same_files(whole, slurm_scenarios.cell_prefix(scenario["out"], "high"))


@pytest.mark.slurm_background
def test_killed_jobs_are_retried_and_a_cell_that_keeps_failing_is_reported():
    scenario = slurm_scenarios.result(
        "test_killed_jobs_are_retried_and_a_cell_that_keeps_failing_is_reported"
    )
    run, out = scenario["run"], scenario["out"]
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    for regime in ("high", "low"):
        assert f"final ER_ProcMaze_{regime}: job " in run.stdout
    retried = "with no new checkpoint (step 0); submitting it again (retry 1 of 1)"
    assert run.stdout.count(retried) == 2
    assert "final ER_ProcMaze_high: done" in run.stdout
    assert finished(slurm_scenarios.cell_prefix(out, "high"))
    assert "final ER_ProcMaze_low: failed (1 retries spent): job " in run.stderr
    assert "last lines:" in run.stderr  # the job's log, to see why
    assert "final: 1 done, 0 running, 0 pending, 1 failed" in run.stdout
    status = scenario["status"]
    assert status.returncode == 0, status.stderr
    assert "final: 1 done, 0 running, 0 pending, 1 failed" in status.stdout
    assert "  ER_ProcMaze_high: DONE" in status.stdout
    assert "  ER_ProcMaze_low: FAILED" in status.stdout


@pytest.mark.slurm_background
def test_two_drivers_released_at_once_on_one_folder_submit_once():
    scenario = slurm_scenarios.result("test_two_drivers_released_at_once_on_one_folder_submit_once")
    runs = scenario["runs"]
    winners = [i for i, run in enumerate(runs) if "final: slurm jobs " in run.stdout]
    assert len(winners) == 1, [run.stdout + run.stderr for run in runs]
    winner, loser = runs[winners[0]], runs[1 - winners[0]]
    assert winner.returncode == 0, winner.stderr[-3000:]
    assert loser.returncode == 1
    assert loser.stderr.count("\n") == 1, loser.stderr
    assert f"another driver works on it (host {os.uname().nodename}, pid " in loser.stderr
    assert f"pid {scenario['pids'][winners[0]]}," in loser.stderr
    assert len(slurm_scenarios.recorded_ids(scenario["out"])) == 1


FAKE_SBATCH = """#!/bin/sh
echo "sbatch: error: Batch job submission failed: Invalid account or account/partition \
combination specified" >&2
exit 1
"""


@pytest.mark.parametrize(
    "flags, fake_sbatch, expected",
    [
        (["--slurm-partition", "nope"], False, "--slurm-partition nope: no such partition here"),
        (["--mem-gb", "100000"], False, "--mem-gb 100000: no node of partition debug has "),
        (["--gpus-per-job", "1"], False, "pass --gpus-per-job 0 or less"),
        (["--cpus-per-job", "8"], False, "--cpus-per-job 8: no node of partition debug has 8 "),
        (["--time", "2", "--signal-delay", "300"], False, "--signal-delay 300: not below --time"),
        # What sinfo cannot foresee (an account), refused by a stand-in sbatch:
        ([], True, "final: sbatch refused the jobs: Batch job submission failed: Invalid account"),
    ],
)
def test_each_refused_request_is_one_line_exit_2_and_leaves_no_log(
    flags, fake_sbatch, expected, tmp_path, monkeypatch, capsys
):
    if fake_sbatch:
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "sbatch").write_text(FAKE_SBATCH)
        (fake / "sbatch").chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    command = [*slurm_scenarios.QUICK_FINAL, "--executor", "slurm", "--cpus-per-job", "1"]
    command += ["--regimes", "high", "--out-dir", str(tmp_path / "runs"), *flags]
    with pytest.raises(SystemExit) as exit_info:
        r4.main(command)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    logs = tmp_path / "runs" / "logs"
    assert not logs.exists() or not any(logs.rglob("*")), list(logs.rglob("*"))


def test_steps_of_a_checkpoint_are_read_without_loading_it(tmp_path):
    """`checkpoint.steps_done`, which the driver reads each look: 0 without a checkpoint."""
    assert slurm_scenarios.steps(str(tmp_path), "high") == 0
    np.testing.assert_equal(slurm_scenarios.recorded_ids(str(tmp_path)), [])
