"""Compilation and device placement: the loop of `loop.py` jitted once per run, its (grid
point, seed) pairs sharded over the devices, the memory check, XLA's CPU flags and its
persistent compilation cache."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agents import Agent
from training import config, loop
from training.files import make_writable_dir
from training.saved_programs import SavedProgramJit, disable_compilation_cache, program_key


def _default_xla_flag(flag: str, value) -> None:
    """Add `flag=value` to XLA_FLAGS unless the user set that flag. XLA reads its flags when
    its backend starts, at the first computation; importing these modules computes nothing."""
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={value}".strip()


# XLA's CPU backend hands both matrix products and element-wise fusions to YNNPACK by default.
# For the small batched MLPs here the element-wise fusions are slower than XLA's own loops
# (update time at 8 seeds up to 25% lower for the learned models, unchanged without one;
# README "Performance").
_default_xla_flag("--xla_cpu_experimental_ynn_fusion_type", "dot")
# One CPU device per core. The (grid point, seed) pairs are sharded across them
# (`pair_sharding`), so each core runs its own pairs' updates: one seed's matrix products (batch
# 32 in a rollout step) are too small for XLA to split across cores, and pairs are independent.
# Results agree with a single device up to float rounding (tested).
CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_default_xla_flag("--xla_force_host_platform_device_count", CPU_CORES or 1)


def pair_sharding(num_points: int, num_seeds: int, devices=None) -> NamedSharding:
    """The (grid point, seed) pairs, axes [G, S], split evenly over as many devices as the
    axes allow: a mesh of `g x s` devices with `g` dividing `num_points` and `s` dividing
    `num_seeds`, as many as possible (at most all of `devices`, by default the backend's: one
    per core on CPU, the GPUs on a GPU machine)."""
    devices = jax.devices() if devices is None else list(devices)
    # Divisors up to the number of devices only: the work stays that of the devices, whatever
    # the sizes (2e9 seeds once spent minutes here before the memory check could refuse them).
    most = len(devices)
    shapes = [
        (g, s)
        for g in range(1, min(num_points, most) + 1)
        for s in range(1, min(num_seeds, most) + 1)
        if num_points % g == 0 and num_seeds % s == 0 and g * s <= most
    ]
    g, s = max(shapes, key=lambda shape: (shape[0] * shape[1], shape[1]))
    mesh = Mesh(np.array(devices[: g * s]).reshape(g, s), ("grid", "seeds"))
    return NamedSharding(mesh, PartitionSpec("grid", "seeds"))


class CompiledRun(NamedTuple):
    """The three jitted functions of a run, each compiled once, all over the [G, S] axes of
    (grid point, seed) pairs; `hp` has the grid axis [G]."""

    pairs: NamedSharding  # where the training state lives (`pair_sharding`)
    init: Callable  # keys [S] -> TrainState [G, S]: every grid point starts from the same keys
    chunk: Callable  # (TrainState, t0, train, hp) -> (TrainState, ChunkReport); donates state
    evaluate: Callable  # (learner, keys [S], hp) -> scores [G, S]


def with_matmul_precision(fn, precision: str):
    """`fn` traced with float32 matrix products computed as `matmul_precision` says: JAX reads
    the setting when it traces a product, so the compiled program carries it (and it is part
    of the saved program's key, being a config key)."""

    def traced_with_precision(*args):
        with jax.default_matmul_precision(precision):
            return fn(*args)

    return traced_with_precision


def compile_run(
    agent: Agent,
    env,
    cfg: dict,
    num_points: int = 1,
    devices=None,
    program_dir: str | None = None,
) -> CompiledRun:
    """The loop of `loop.py` for `num_points` grid points x `num_seeds` seeds, jitted once:
    the run's functions (`run_functions`), each jitted, or with `program_dir` kept there as
    traced and lowered programs (`SavedProgramJit`), so that a second launch of the same config
    skips tracing and lowering."""
    pairs = pair_sharding(num_points, cfg["num_seeds"], devices)
    functions = run_functions(agent, env, cfg, num_points, pairs)
    if program_dir is None:
        jitted = {name: jax.jit(fn, **kw) for name, (fn, kw) in functions.items()}
        return CompiledRun(pairs, **jitted)
    run_key = program_key(cfg, pairs, num_points)
    return CompiledRun(
        pairs,
        **{
            name: SavedProgramJit(fn, kw, os.path.join(program_dir, f"{name}-{run_key}"))
            for name, (fn, kw) in functions.items()
        },
    )


def run_functions(agent: Agent, env, cfg: dict, num_points: int, pairs) -> dict:
    """The run's three functions over every (grid point, seed) pair, each with its `jax.jit`
    arguments: `init` (keys [S] -> states [G, S]), `chunk` (one chunk of `eval_frequency`
    steps) and `evaluate` (greedy scores [G, S]), traced at the config's matmul precision.

    Pairs are independent, so each device runs the chunk on its own block of them
    (`jax.shard_map`): nothing crosses devices inside a chunk, not even the test whether
    any episode ended (`loop.seeds_step`). Grid points share the seeds' random streams
    (common random numbers): point g, seed s starts from the keys of a single run's seed s.
    """
    mesh = pairs.mesh
    by_point = NamedSharding(mesh, PartitionSpec("grid"))  # hp: the grid axis only
    shared = NamedSharding(mesh, PartitionSpec())  # t0, train and the evaluation keys

    def init(keys):
        states = jax.vmap(lambda key: loop.init_seed(agent, env, key))(keys)
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_points, *x.shape)), states)

    # A CPU device runs its block's grid points one after another, each a chunk of its seeds:
    # one point's parameters and optimiser states stay in the caches through an update, where
    # all points at once would stream every point's from memory in each pass of the update (a
    # 3 x 3 grid x 8 seeds, summed steady rate 762 -> 976 steps/s; one 8-seed run: 960). A GPU
    # runs them all at once: its rate grows with the batch (README, Performance).
    point_by_point = mesh.devices.flat[0].platform == "cpu"

    def chunk_block(states, t0, train, hp):
        def run(states, hp):  # a block [g, s] of pairs, hp [g]
            return loop.agent_environment_interaction_loop_function(
                agent, env, cfg, states, t0, train, hp
            )

        if not point_by_point or states.key.shape[0] == 1:
            return run(states, hp)
        one_point = jax.tree.map(lambda x: x[:, None], (states, hp))  # [g, 1, ...]
        out = jax.lax.map(lambda block: run(*block), one_point)
        return jax.tree.map(lambda x: x[:, 0], out)

    chunk = jax.shard_map(
        chunk_block,
        mesh=mesh,
        in_specs=(pairs.spec, PartitionSpec(), PartitionSpec(), by_point.spec),
        out_specs=pairs.spec,
        # No collectives inside: every value is per device, so JAX need not track which vary.
        check_vma=False,
    )

    def score(learner, key, hp):
        return loop.evaluate(agent, env, cfg, learner, key, hp)

    evaluate = jax.vmap(jax.vmap(score, in_axes=(0, 0, None)), in_axes=(0, None, 0))
    functions = {
        "init": (init, dict(in_shardings=shared, out_shardings=pairs)),
        # The states are donated so the buffers are updated in place, not copied every chunk.
        "chunk": (
            chunk,
            dict(
                in_shardings=(pairs, shared, shared, by_point),
                out_shardings=pairs,
                donate_argnums=0,
            ),
        ),
        "evaluate": (evaluate, dict(in_shardings=(pairs, shared, by_point), out_shardings=pairs)),
    }
    precision = cfg["matmul_precision"]
    return {
        name: (with_matmul_precision(fn, precision), kw) for name, (fn, kw) in functions.items()
    }


# A cache that cannot take this much (a full disk) is off from the start: one line, rather
# than a warning from JAX for every program it fails to write.
CACHE_PROBE_BYTES = 1 << 20


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache, on by default: a second launch of the same config
    skips XLA compilation. `JAX_COMPILATION_CACHE_DIR` moves it; an empty value turns it off.
    Returns the directory for saved programs (`SavedProgramJit`) inside it, or None."""
    directory = os.environ.get(
        "JAX_COMPILATION_CACHE_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "model_generalization_jax"),
    )
    if not directory:
        return None
    programs = os.path.join(directory, "programs")
    try:  # a cache it cannot write (a read-only home or a full disk) is only slower
        make_writable_dir(programs, probe_bytes=CACHE_PROBE_BYTES)
    except OSError as error:
        print(
            f"warning: compilation cache {directory}: {error.strerror}; compiling from scratch "
            "(JAX_COMPILATION_CACHE_DIR moves it)",
            file=sys.stderr,
        )
        disable_compilation_cache()
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return programs


# --------------------------------------------------------------------------------------------
# Memory: a run that cannot fit stops before anything compiles
# --------------------------------------------------------------------------------------------


def state_shapes(agent: Agent, env, num_points: int, num_seeds: int):
    """The training state's `jax.ShapeDtypeStruct`s, axes [G, S] in front: traced from one
    seed's initial state, neither compiled nor allocated."""
    one = jax.eval_shape(lambda key: loop.init_seed(agent, env, key), jax.random.PRNGKey(0))
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((num_points, num_seeds, *x.shape), x.dtype), one
    )


def training_state_bytes(shapes) -> tuple[int, int]:
    """(all, replay buffers) bytes of a training state of these `state_shapes`."""

    def nbytes(tree) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    return nbytes(shapes), nbytes(shapes.buffer)


def available_memory(devices) -> tuple[int, str]:
    """(bytes, what) the devices holding the run can give it: the GPUs' memory, or on CPU the
    host's available memory (every CPU device shares it)."""
    if devices[0].platform != "cpu":
        limits = [(d.memory_stats() or {}).get("bytes_limit", 0) for d in devices]
        return sum(limits), f"{len(devices)} {devices[0].device_kind}"
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024, "this machine's available memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "this machine's free memory"


def metrics_bytes(evaluations: int, num_points: int, num_seeds: int, diagnostics: int) -> int:
    """Host bytes of a run's metrics: per evaluation and pair, the return and each diagnostic
    (float32) and the diverged flag (bool); twice, since writing a checkpoint stacks a copy."""
    return 2 * evaluations * num_points * num_seeds * (4 * (1 + diagnostics) + 1)


def evaluation_bytes(env, cfg: dict, num_points: int) -> int:
    """Bytes the greedy evaluation holds at once (`loop.evaluate`, every pair's
    `eval_batch_size` environments together): per environment its state and observation, the
    observation as the network's float32 input, the keys of its `eval_steps` steps and the Q
    network's activations for one observation. Estimated from shapes, before compiling, so
    that a huge `eval_batch_size` stops in the memory check rather than in XLA."""
    reset = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
    env_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(reset))
    observation = sum(x.size for x in jax.tree.leaves(reset[1]))
    layers = cfg["num_hidden_layers"] * cfg["num_hidden_units"] + env.num_actions()
    per_env = env_bytes + 4 * observation + 8 * cfg["eval_steps"] + 4 * layers
    return per_env * cfg["eval_batch_size"] * num_points * cfg["num_seeds"]


def temporaries_bytes(compiled, num_devices: int) -> int:
    """What a compiled function needs beside its arguments and outputs, as XLA reports it (per
    device), on all the devices that run it."""
    analysis = compiled.memory_analysis()
    return 0 if analysis is None else analysis.temp_size_in_bytes * num_devices


def check_memory(
    shapes, devices=None, metrics: int = 0, temporaries: int | None = None, evaluation: int = 0
) -> str:
    """Raise `ConfigError` when a training state of these `state_shapes` ([G, S] in front),
    with what the run holds beside it, cannot fit on the devices that will hold it; else return
    a line for the start-up log saying how much it takes. Beside the state: on a CPU (whose
    devices share the host's memory) the run's `metrics`, and, once the loop is compiled, its
    `temporaries` (on a CPU running grid points one after another, about 1.2 times the state);
    and the `evaluation`'s environments (`evaluation_bytes`), which a chunk's temporaries do not
    meet (the two run one after the other), so the larger of the two counts."""
    num_points, num_seeds = jax.tree.leaves(shapes)[0].shape[:2]
    state, buffers = training_state_bytes(shapes)
    used = list(pair_sharding(num_points, num_seeds, devices).mesh.devices.flat)
    available, where = available_memory(used)
    metrics = metrics if used[0].platform == "cpu" else 0  # a GPU run's metrics are the host's
    total = state + metrics + max(temporaries or 0, evaluation)
    points = f" x {num_points} grid points" if num_points > 1 else ""
    gb = 1e9  # decimal gigabytes, as `free --giga` and most people count them
    parts = [f"training state {state / gb:.2f} GB (replay buffers {buffers / gb:.2f} GB)"]
    if metrics:
        parts.append(f"metrics {metrics / gb:.2f} GB")
    if evaluation:
        parts.append(f"evaluation {evaluation / gb:.2f} GB")
    if temporaries is not None:
        parts.append(f"the compiled loop's temporaries {temporaries / gb:.2f} GB")
    need = f"{', '.join(parts)} for {num_seeds} seeds{points}"
    if total > available:
        # The key to name: the one behind the largest part.
        largest = max(
            (state, "buffer_size"), (metrics, "num_steps"), (evaluation, "eval_batch_size")
        )
        raise config.ConfigError(
            f"{largest[1]}: the run needs {total / gb:.2f} GB ({need}), more than the "
            f"{available / gb:.1f} GB of {where}; lower {largest[1]}, num_seeds or the grid"
        )
    return f"memory: {need}; {available / gb:.1f} GB in {where}"
