"""Timing and FLOPs of a run's compiled pieces, for the benchmark (`benchmark.py`) and the
Figure 4 cost estimate (`figure4/estimate.py`): both time the run that `experiment.prepare`
sets up, never a copy of it.

FLOPs are counted from the layer sizes by each agent's own `flops_per_step` (its definition,
with `agents.mlp_flops`). XLA's own cost analysis of the compiled update was compared once and
does not give the same numbers: it counts the body of a `lax.scan` (a rollout) once rather than
once per step, and one-hot products as gathers (README, "Performance").
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

from training.experiment import Setup, compile_setup, run_keys


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """XLA's own dense float32 matmul throughput on this device: the roofline proxy."""
    x = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        y = f(x)
    y.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


class Timing(NamedTuple):
    """A run's compiled pieces timed on this machine (seconds)."""

    steps: int  # environment steps per chunk
    pairs: int  # (grid point, seed) pairs
    compile_s: float  # the initial state, tracing, lowering and compiling chunk and evaluate
    xla_compile_s: float  # XLA's part of it (a cache load on a second launch)
    off_s: list[float]  # each chunk with training off (acting, environment, storing)
    on_s: list[float]  # each chunk with training on, after those
    eval_s: float  # one evaluation of every pair, after a first one


def time_run(
    setup: Setup, program_dir: str | None = None, off_chunks: int = 0, on_chunks: int = 1
) -> tuple[Timing, object]:
    """Compile the run of `setup`, then time `off_chunks` chunks with training off, `on_chunks`
    with training on, and an evaluation. Returns (timing, the training state after them)."""
    run = compile_setup(setup, program_dir)
    keys, _ = run_keys(setup.cfg["seed"], setup.cfg["num_seeds"])
    hp, steps = setup.hp, setup.cfg["eval_frequency"]
    start = time.perf_counter()
    state = jax.block_until_ready(run.init(keys))
    lowered = run.chunk.lower(state, jnp.int32(0), jnp.bool_(True), hp)
    lowered_evaluate = run.evaluate.lower(state.learner, keys, hp)
    tick = time.perf_counter()
    chunk, evaluate = lowered.compile(), lowered_evaluate.compile()
    xla_compile_s = time.perf_counter() - tick
    compile_s = time.perf_counter() - start

    def timed(fn, *arguments):
        tick = time.perf_counter()
        result = jax.block_until_ready(fn(*arguments))
        return result, time.perf_counter() - tick

    times = {False: [], True: []}
    for i, train in enumerate([False] * off_chunks + [True] * on_chunks):
        (state, _), seconds = timed(chunk, state, jnp.int32(steps * i), jnp.bool_(train), hp)
        times[train].append(seconds)
    timed(evaluate, state.learner, keys, hp)
    _, eval_s = timed(evaluate, state.learner, keys, hp)
    pairs = setup.cfg["num_seeds"] * len(setup.points)
    timing = Timing(steps, pairs, compile_s, xla_compile_s, times[False], times[True], eval_s)
    return timing, state
