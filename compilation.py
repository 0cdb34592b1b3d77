"""Compilation and device placement: the loop of `loop.py` jitted once per run, its seed axis
sharded over the devices, XLA's CPU flags and its persistent compilation cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import loop
from saved_programs import SavedProgramJit, program_key


def _default_xla_flag(flag: str, value) -> None:
    """Add `flag=value` to XLA_FLAGS unless the user set that flag. XLA reads its flags when
    its backend starts, at the first computation; importing these modules computes nothing."""
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={value}".strip()


# XLA's CPU backend hands both matrix products and element-wise fusions to YNNPACK by default.
# For the small batched MLPs here the element-wise fusions are slower than XLA's own loops
# (update time at 8 seeds: simple model -25%, Gaussian latent -25%, categorical latent -8%,
# ER and perfect model unchanged; README "Performance").
_default_xla_flag("--xla_cpu_experimental_ynn_fusion_type", "dot")
# One CPU device per core. The seed axis is sharded across them (`seed_sharding`), so each core
# runs its own seeds' updates: one seed's matrix products (batch 32 in a rollout step) are too
# small for XLA to split across cores, and seeds are independent. Results agree with a
# single device up to float rounding (tested).
CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_default_xla_flag("--xla_force_host_platform_device_count", CPU_CORES or 1)


def seed_sharding(num_seeds: int, devices=None) -> NamedSharding:
    """The seed axis split evenly over as many devices as divide `num_seeds` (at most all of
    `devices`, by default the backend's: one per core on CPU, the GPUs on a GPU machine)."""
    devices = jax.devices() if devices is None else list(devices)
    count = max(n for n in range(1, min(len(devices), num_seeds) + 1) if num_seeds % n == 0)
    return NamedSharding(Mesh(np.array(devices[:count]), ("seeds",)), PartitionSpec("seeds"))


class CompiledRun(NamedTuple):
    """The three jitted functions of a run, each compiled once, all over the seed axis."""

    init: Callable  # keys [S] -> TrainState
    chunk: Callable  # (TrainState, t0, train, hp) -> (TrainState, rewards [S]); donates state
    evaluate: Callable  # (learner, keys [S], hp) -> scores [S]


def compile_run(
    agent: loop.Agent, env, cfg: dict, devices=None, program_dir: str | None = None
) -> CompiledRun:
    """Seeds are independent, so each device runs its share of them (`seed_sharding`); the only
    exchange between devices is whether any seed's episode ended this step (`seeds_step`).

    With `program_dir`, each function's traced and lowered program is kept there
    (`SavedProgramJit`), so a second launch of the same config skips tracing and lowering.
    """

    def chunk(states, t0, train, hp):
        return loop.agent_environment_interaction_loop_function(agent, env, cfg, states, t0, train, hp)

    def score(learner, key, hp):
        return loop.evaluate(agent, env, cfg, learner, key, hp)

    seeds = seed_sharding(cfg["num_seeds"], devices)
    shared = NamedSharding(seeds.mesh, PartitionSpec())  # t0, train and hp: the same for all
    functions = {
        "init": (
            jax.vmap(lambda key: loop.init_seed(agent, env, key)),
            dict(in_shardings=seeds, out_shardings=seeds),
        ),
        # The states are donated so the buffers are updated in place, not copied every chunk.
        "chunk": (
            chunk,
            dict(
                in_shardings=(seeds, shared, shared, shared),
                out_shardings=seeds,
                donate_argnums=0,
            ),
        ),
        "evaluate": (
            jax.vmap(score, in_axes=(0, 0, None)),
            dict(in_shardings=(seeds, seeds, shared), out_shardings=seeds),
        ),
    }
    if program_dir is None:
        return CompiledRun(**{name: jax.jit(fn, **kw) for name, (fn, kw) in functions.items()})
    run_key = program_key(cfg, seeds)
    return CompiledRun(
        **{
            name: SavedProgramJit(fn, kw, os.path.join(program_dir, f"{name}-{run_key}"))
            for name, (fn, kw) in functions.items()
        }
    )


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache, on by default: a second launch of the same config
    skips XLA compilation. `JAX_COMPILATION_CACHE_DIR` moves it; an empty value turns it off.
    Returns the directory for saved programs (`SavedProgramJit`) inside it, or None."""
    directory = os.environ.get(
        "JAX_COMPILATION_CACHE_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "model_generalization_jax"),
    )
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        return os.path.join(directory, "programs")
    return None
