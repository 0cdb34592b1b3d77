"""The Figure 4 driver's parts that need no cluster: the request checked against `sinfo`, one
driver per folder, the status file, and a plot of every cell under `--out-dir`."""

import json
import os
import pickle
import re
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reproduce_figure4 as r4
from figure4 import cluster, executors, jobs
from figure4.plan import Cell, Job

PARTITIONS = ("debug", "gpu")


def options(**changes) -> jobs.Options:
    base = jobs.Options("slurm", 0, 1, None, 0, 1, None, None, 4, 300, 30.0, False)
    return base._replace(**changes)


nodes = st.lists(
    st.builds(
        cluster.Node,
        partition=st.sampled_from(PARTITIONS),
        default=st.just(False),
        cpus=st.integers(1, 64),
        mem_mb=st.integers(1024, 512_000),
        gpus=st.integers(0, 8),
        limit_min=st.none() | st.integers(10, 10_000),
    ),
    min_size=1,
    max_size=6,
)
requests = st.fixed_dictionaries(
    {
        "slurm_partition": st.sampled_from(PARTITIONS),
        "cpus_per_job": st.integers(1, 64),
        "gpus_per_job": st.integers(0, 8),
        "mem_gb": st.none() | st.floats(1, 600),
        "time": st.none() | st.integers(1, 10_000),
    }
)


def fits(node: cluster.Node, request: dict) -> bool:
    minutes = request["time"] or jobs.SLURM_DEFAULT_MIN
    return (
        node.partition == request["slurm_partition"]
        and node.cpus >= request["cpus_per_job"]
        and node.gpus >= request["gpus_per_job"]
        and node.mem_mb / 1024 >= (request["mem_gb"] or 0) - 0.1  # the line rounds down
        and (node.limit_min is None or minutes <= node.limit_min)
    )


@settings(max_examples=200, deadline=None)
@given(nodes, requests)
def test_a_request_is_refused_exactly_when_no_node_fits_and_the_value_named_fits(nodes, request):
    mismatch = cluster.request_mismatch(nodes, options(**request))
    exact = [n for n in nodes if fits(n, {**request, "mem_gb": (request["mem_gb"] or 0) + 0.1})]
    if mismatch is None:
        assert any(fits(node, request) for node in nodes)
        return
    assert not exact, mismatch  # no node fits (memory: to the 0.1 GB the line rounds to)
    flag = mismatch.split(" ", 1)[0].split(":")[0]
    named = re.search(r"pass (--[a-z-]+) ([0-9.]+) or less", mismatch)
    if named:  # the value it names fits that part of the request
        key = named.group(1)[2:].replace("-", "_")
        value = float(named.group(2))
        again = cluster.request_mismatch(nodes, options(**{**request, key: value}))
        assert again is None or not again.startswith(f"{flag} "), (mismatch, again)


@pytest.mark.parametrize(
    "text, minutes",
    [("infinite", None), ("30", 30), ("30:00", 30), ("1:00:00", 60), ("2-12", 3600)],
)
def test_slurm_times_in_minutes(text, minutes):
    assert cluster.slurm_minutes(text) == minutes


def test_sinfo_lines_are_read_with_their_gpus_and_default_partition():
    text = "debug*|2|21694|(null)|infinite\ngpu|64|512000|gpu:a100:4(S:0-1),shard:8|2-00:00:00\n"
    debug, gpu = cluster.parse_sinfo(text)
    assert debug == cluster.Node("debug", True, 2, 21694, 0, None)
    assert gpu == cluster.Node("gpu", False, 64, 512000, 4, 2880)


def test_a_second_driver_on_a_folder_is_refused_naming_the_first_and_a_dead_ones_lock_is_not(
    tmp_path,
):
    holding = cluster.driver_lock(str(tmp_path))
    with (
        holding,
        pytest.raises(cluster.LockedError) as info,
        cluster.driver_lock(str(tmp_path)),
    ):
        pass
    holder = f"host {os.uname().nodename}, pid {os.getpid()},"
    assert f"another driver works on it ({holder}" in str(info.value)
    # What a driver that died leaves: the file, without the kernel's lock.
    (tmp_path / cluster.LOCK_FILE).write_text(json.dumps({"host": "x", "pid": 1, "since": "0"}))
    with cluster.driver_lock(str(tmp_path)):
        pass


def test_status_of_a_folder_without_one_says_so(tmp_path, capsys):
    assert r4.main(["--status", "--out-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no status in {tmp_path} yet: no driver has run jobs there\n"


def write_out(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    record = {
        "config": types.SimpleNamespace(num_steps=200, eval_frequency=10),
        "metrics": {
            "reward_rates": [rng.normal(i / 4, 1, 3) for i in range(20)],
            "eval_times": [10 * i for i in range(20)],
        },
    }
    with open(path, "wb") as f:
        pickle.dump(record, f)


def test_plot_after_adding_a_cell_keeps_the_others(tmp_path, capsys):
    final = tmp_path / "final"
    final.mkdir()
    write_out(final / "ER_ProcMaze_high.out", 0)
    write_out(final / "perfect_model_ProcMaze_high.out", 1)
    # A cell added later, by a run of the driver on that agent only:
    write_out(final / "simple_model_ProcMaze_high.out", 2)
    flags = ["--stage", "plot", "--agents", "simple_model", "--envs", "ProcMaze"]
    assert r4.main([*flags, "--regimes", "high", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"plot: every finished cell under {final} is drawn, also agents ER perfect_model" in out
    assert "plot: 3 curves" in out
    for label in ("1. ", "2. ", "3. "):
        assert f"  {label}" in out  # the ranking has all three
    assert (tmp_path / "figure4.png").read_bytes()[:4] == b"\x89PNG"


def looks(seen: list[tuple[str, str]], tmp_path) -> list[str]:
    """The driver's lines for a job listed as `seen` (state, start time) at successive looks."""
    cell = Cell("ER", "ProcMaze", "high")
    raw = {"num_steps": 200, "eval_frequency": 20}
    prefix = str(tmp_path / cell.name)
    job = Job("final", cell, raw, {}, prefix + ".json", prefix, ())
    watch = executors.Watch(job, types.SimpleNamespace(job_id="12_0"), 0)
    lines = []
    for state, started in seen:
        watch, new = executors.follow(watch, executors.Seen(state, started))
        lines += new
    return lines


@pytest.mark.parametrize(
    "seen",
    [
        # requeued: the job passes through COMPLETING and PENDING, and runs from a new start
        [("PENDING", "t0"), ("RUNNING", "t1"), ("COMPLETING", "t1"), ("PENDING", "t3"),
         ("RUNNING", "t4"), ("RUNNING", "t4")],
        # the same, its time in the queue between two looks
        [("RUNNING", "t1"), ("RUNNING", "t4")],
    ],
)  # fmt: skip
def test_a_requeue_is_logged_once_however_the_looks_fall(seen, tmp_path):
    lines = looks(seen, tmp_path)
    requeued = [line for line in lines if "requeued" in line]
    assert requeued == ["final ER_ProcMaze_high: job 12_0 requeued at step 0 (1st time)"]


def test_a_job_running_on_is_not_a_requeue(tmp_path):
    lines = looks([("PENDING", "t0"), ("RUNNING", "t1"), ("RUNNING", "t1")], tmp_path)
    assert lines == [
        "final ER_ProcMaze_high: job 12_0 PENDING, step 0 of 200",
        "final ER_ProcMaze_high: job 12_0 RUNNING, step 0 of 200",
    ]
