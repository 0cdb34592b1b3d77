"""Figure 4 on a real one-node SLURM cluster (`scripts/start_test_cluster.sh`; `.ci/run` starts
it): the quick pipeline end to end, a job that needs three times its time limit, `scontrol
requeue` of a running job, and a driver killed and started again. Skipped, with the reason,
where no cluster answers.

The jobs that must outlive a time limit or a requeue sleep after each chunk
(`slurm_jobs.SlowTrainingJob`): their runs need minutes of wall time and little CPU."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import slurm_jobs
from helpers import (
    DRIVER,
    QUICK_PIPELINE,
    load_pickle,
    run_quick_driver,
    tiny_config,
)

from agent_registry import AGENTS

pytestmark = pytest.mark.skipif(
    not slurm_jobs.cluster_answers(),
    reason="no SLURM cluster answers here (scripts/start_test_cluster.sh starts one)",
)
ON_THE_TEST_CLUSTER = ["--executor", "slurm", "--gpus-per-job", "0", "--cpus-per-job", "1"]
ON_THE_TEST_CLUSTER += ["--poll", "2"]


def whole_run(raw: dict, folder) -> str:
    """The run never interrupted, in this process: the prefix of its files."""
    prefix = str(folder / "whole")
    AGENTS["ER"].run(raw, prefix, quiet=True)
    return prefix


def assert_same_files(prefix: str, other: str) -> None:
    for suffix in (".out", ".params"):
        with open(prefix + suffix, "rb") as a, open(other + suffix, "rb") as b:
            assert a.read() == b.read(), suffix  # bit for bit


def job_log(handle) -> str:
    with open(handle.paths.stderr, errors="replace") as f:
        return f.read()


def test_quick_figure4_on_slurm_gives_the_inline_metrics(tmp_path, quick_pipeline, driver_cache):
    inline, _ = quick_pipeline
    out = tmp_path / "slurm"
    flags = [*QUICK_PIPELINE, *ON_THE_TEST_CLUSTER, "--out-dir", str(out)]
    process, _ = run_quick_driver(*flags, cache_dir=driver_cache)
    outs = sorted(glob.glob(str(inline / "*" / "*.out")))
    assert len(outs) == 10  # 8 tune points, 2 final runs
    for path in outs:
        there = load_pickle(path.replace(str(inline), str(out)))["metrics"]
        for name, values in load_pickle(path)["metrics"].items():
            np.testing.assert_array_equal(there[name], values, err_msg=f"{path} {name}")
    assert (out / "figure4.png").read_bytes()[:4] == b"\x89PNG"
    # The driver's log: one line per job state change, and none of sacct's complaints.
    assert "sacct" not in process.stdout + process.stderr
    assert "tune ER_ProcMaze_high: job " in process.stdout and " RUNNING" in process.stdout
    assert "final ER_ProcMaze_low: done" in process.stdout


@pytest.mark.slurm_background
def test_a_job_three_times_its_time_limit_finishes_through_requeues(tmp_path):
    """The job started with the session (`conftest.pytest_collection_finish`): a run of about
    three minutes under a one-minute limit. SLURM warns it (SIGUSR2) before each limit; it
    checkpoints at its chunk's end, submitit requeues it, and it resumes, until it is done."""
    handle, raw, prefix = slurm_jobs.background_job()
    assert slurm_jobs.wait_for_result(handle, timeout=1500) == "done"
    log = job_log(handle)
    requeues = log.count("SIGUSR2: stopping at the end of this chunk")
    assert requeues >= 2, log[-3000:]
    assert "stopped by SIGUSR2" in log
    assert_same_files(whole_run(raw, tmp_path), prefix)


def test_scontrol_requeue_of_a_running_job_resumes_exactly(tmp_path):
    raw = tiny_config("ER", num_steps=500, eval_frequency=20, training_start_time=0)
    prefix = str(tmp_path / "run")
    handle = slurm_jobs.submit(str(tmp_path / "logs"), slurm_jobs.SlowTrainingJob(1.0), raw, prefix)
    deadline = time.time() + 300
    while not os.path.exists(prefix + ".out"):  # it has started training
        assert time.time() < deadline, job_log(handle)[-3000:]
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", handle.job_id], check=True)
    assert slurm_jobs.wait_for_result(handle, timeout=600) == "done"
    log = job_log(handle)
    assert "SIGTERM: stopping at the end of this chunk" in log and "stopped by SIGTERM" in log
    assert_same_files(whole_run(raw, tmp_path), prefix)


def test_a_restarted_driver_waits_on_its_jobs_and_submits_none_twice(tmp_path, driver_cache):
    out = tmp_path / "runs"
    command = [sys.executable, DRIVER, "--quick", "--agents", "ER", "--envs", "ProcMaze"]
    command += ["--stage", "final", *ON_THE_TEST_CLUSTER, "--out-dir", str(out)]
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": driver_cache}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    submitted = first.stdout.readline()
    assert submitted.startswith("final: slurm jobs "), submitted
    first.send_signal(signal.SIGKILL)  # an ssh session dropped: the driver dies, its jobs go on
    first.communicate()
    records = slurm_jobs.read_records(out)
    assert len(records) == 2

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    waited = second.stdout.count("of an earlier driver is")
    finished = "final: 2 of 2 jobs already finished" in second.stdout
    assert waited == 2 or finished, second.stdout  # none submitted again
    assert "slurm jobs" not in second.stdout
    assert slurm_jobs.read_records(out) == records
    for regime in ("high", "low"):
        metrics = load_pickle(out / "final" / f"ER_ProcMaze_{regime}.out")["metrics"]
        assert len(metrics["eval_times"]) == 10
    job_folders = [n for n in os.listdir(out / "logs" / "final") if re.fullmatch(r"\d+_\d+", n)]
    assert sorted(job_folders) == sorted(record["job_id"] for record in records.values())
