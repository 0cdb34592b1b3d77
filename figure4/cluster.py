"""What the Figure 4 driver checks before it submits: one driver per `--out-dir` at a time
(`driver_lock`, the kernel's `flock`), and the request against what `sinfo` says the cluster
has (`fit_to_cluster`), with sbatch's own refusals in one line (`refusal_line`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import subprocess
import time
from typing import NamedTuple

from figure4.jobs import SLURM_DEFAULT_MIN, Options

LOCK_FILE = "driver.lock"  # under --out-dir: one driver per folder


# --------------------------------------------------------------------------------------------
# One driver per --out-dir
# --------------------------------------------------------------------------------------------


class LockedError(Exception):
    """Another driver works on the same `--out-dir`: the line names it."""


def holder_of(path: str) -> str:
    """'host H, pid P' of the driver that holds the lock, as it wrote it (it may be writing)."""
    for _ in range(50):
        try:
            with open(path) as f:
                holder = json.load(f)
            return f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}"
        except (OSError, ValueError, KeyError):
            time.sleep(0.02)
    return "unknown holder"


@contextlib.contextmanager
def driver_lock(out_dir: str):
    """Hold `<out_dir>/driver.lock` while the driver runs: a second driver on the same folder
    raises `LockedError` at once. The lock is the kernel's (`flock`), so a driver that died,
    however it died, holds none: its stale file does not block."""
    path = os.path.join(out_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(
            f"--out-dir {out_dir}: another driver works on it ({holder_of(path)}); let it "
            "finish or stop it, then run this command again"
        ) from None
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, harmless


# --------------------------------------------------------------------------------------------
# The request checked against the cluster before the first sbatch
# --------------------------------------------------------------------------------------------


class RequestError(Exception):
    """The jobs' request cannot run on this cluster, or sbatch refused it: the line says which
    flag and what would fit."""


class Node(NamedTuple):
    """One node of one partition, as `sinfo -N` lists it."""

    partition: str
    default: bool  # the partition a job without --partition goes to
    cpus: int
    mem_mb: int
    gpus: int
    limit_min: int | None  # the partition's time limit; None: infinite


def slurm_minutes(text: str) -> int | None:
    """SLURM's time ('infinite', 'MM', 'MM:SS', 'HH:MM:SS', 'D-HH[:MM[:SS]]') in whole minutes
    (seconds round down); None for no limit."""
    if text.strip().lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
        hours, minutes, _ = parts
    else:
        hours, minutes = ([0, *parts] if len(parts) < 3 else parts)[:2]
        if len(parts) == 1:
            hours, minutes = 0, parts[0]
    return int(days or 0) * 1440 + hours * 60 + minutes


def gres_gpus(text: str) -> int:
    """GPUs in a node's generic resources ('gpu:a100:4(S:0-1),shard:8' -> 4; '(null)' -> 0)."""
    total = 0
    for item in text.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu":
            total += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return total


def parse_sinfo(text: str) -> list[Node]:
    """`sinfo -h -N -o '%P|%c|%m|%G|%l'` lines as `Node`s."""
    nodes = []
    for line in text.splitlines():
        if line.count("|") != 4:
            continue
        partition, cpus, mem, gres, limit = (field.strip() for field in line.split("|"))
        nodes.append(
            Node(
                partition.rstrip("*"),
                partition.endswith("*"),
                int(cpus.rstrip("+") or 0),
                int(mem.rstrip("+") or 0),
                gres_gpus(gres),
                slurm_minutes(limit),
            )
        )
    return nodes


def request_mismatch(nodes: list[Node], options: Options) -> str | None:
    """The first part of the jobs' request that no node of the partition can give, with the
    value that would fit; None when some node fits it all. `options.gpus_per_job` is set."""
    names = " ".join(sorted({node.partition for node in nodes}))
    partition = options.slurm_partition or next((n.partition for n in nodes if n.default), None)
    if partition is None:
        return f"--slurm-partition: the cluster has no default partition; pass one of: {names}"
    fits = [node for node in nodes if node.partition == partition]
    if not fits:
        return f"--slurm-partition {partition}: no such partition here; the cluster has: {names}"
    wants = (  # flag, wanted, what a node has, how to say it
        ("--cpus-per-job", options.cpus_per_job, lambda n: n.cpus, "{} CPUs"),
        ("--gpus-per-job", options.gpus_per_job, lambda n: n.gpus, "{} GPUs"),
        ("--mem-gb", options.mem_gb or 0, lambda n: math.floor(n.mem_mb / 102.4) / 10, "{} GB"),
    )
    for flag, wanted, has, unit in wants:
        most = max(has(node) for node in fits)
        fits = [node for node in fits if has(node) >= wanted]
        if not fits:
            return (
                f"{flag} {wanted:g}: no node of partition {partition} has "
                f"{unit.format(f'{wanted:g}')} (the most is {most:g}); pass {flag} {most:g} or less"
            )
    limits = [node.limit_min for node in fits]
    limit = None if None in limits else max(limits)
    minutes = options.time or SLURM_DEFAULT_MIN
    if limit is not None and minutes > limit:
        return f"--time {minutes}: partition {partition} allows at most {limit} minutes"
    return None


def fit_to_cluster(options: Options) -> Options:
    """Check the jobs' request against the cluster (`sinfo`) before anything is submitted:
    raises `RequestError` naming the first mismatch. Without `--gpus-per-job`, jobs get one
    GPU where the partition has GPUs and none where it has none. A `sinfo` that does not
    answer leaves the check to sbatch (whose refusal is one line too)."""
    minutes = options.time or SLURM_DEFAULT_MIN
    if options.signal_delay >= minutes * 60:
        raise RequestError(
            f"--signal-delay {options.signal_delay}: not below --time {minutes} minutes "
            f"({minutes * 60} s): the warning would come before the job starts"
        )
    command = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        nodes = parse_sinfo(done.stdout) if done.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        nodes = []
    if not nodes:
        print("sinfo did not answer: the request is left to sbatch to check", flush=True)
        return options._replace(gpus_per_job=options.gpus_per_job or 0)
    if options.gpus_per_job is None:
        partition = options.slurm_partition or next((n.partition for n in nodes if n.default), "")
        has_gpus = any(n.gpus for n in nodes if n.partition == partition)
        options = options._replace(gpus_per_job=1 if has_gpus else 0)
        if not has_gpus:
            print(f"slurm: partition {partition} has no GPUs: jobs run on CPUs", flush=True)
    mismatch = request_mismatch(nodes, options)
    if mismatch:
        raise RequestError(mismatch)
    return options


def refusal_line(error: BaseException) -> str:
    """sbatch's own line from submitit's error ('Batch job submission failed: ...')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1] if lines else type(error).__name__
