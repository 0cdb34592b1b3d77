"""Speed, FLOP rate and memory of the training loop of each agent.

    python benchmark.py              # all agents, 1 and 8 seeds (< 10 min on 2 cores)
    python benchmark.py --agents ER simple_model --seeds 1 8 30 --output benchmarks/cpu
    python benchmark.py --seeds 30 --grid-seeds 30      # also a 3x3 grid x 30 seeds as one run
    python benchmark.py --grid --agents ER simple_model --seeds 8   # grid vs nine runs
    python benchmark.py --overheads --seeds 8           # diagnostics and checkpoint costs

Each (agent, seeds) point runs in a fresh subprocess (so peak memory is that point's own) on its
shipped config with `eval_frequency` 250 and the shipped network, batch and buffer sizes. It
reports:
- compile: seconds to trace, lower and compile the run's jitted functions with empty caches,
  and again in a second process that finds them in the caches (a second launch: saved programs
  instead of tracing and lowering, `saved_programs.SavedProgramJit`, and XLA's persistent cache); in
  brackets the XLA part alone (`Lowered.compile`, a cache load on a second launch);
- steps/s: environment steps per second summed over seeds, training on, after compilation
  (median over timed chunks, evaluation excluded);
- GFLOP/s: matrix-multiply FLOPs per environment step, counted from the layer sizes by
  `flops_per_step` (forward = 2·fan_in·fan_out per layer and sample, forward + backward = 3×
  forward, target and rollout forwards once), times steps/s;
- roofline: that rate over XLA's own dense float32 matmul throughput measured in the same
  process (`matmul_gflops`);
- peak memory: the process's peak RSS, and the device's peak bytes on a GPU.
With `--grid-seeds`, a 3 x 3 grid (step size x temperature at half, once and twice the shipped
values) runs as one compiled run too; its steps/s are summed over the 9 x S pairs. `--grid`
instead compares that grid, as one run, with its nine points as nine separate processes (wall
time including compilation, steady-state rate, peak RSS). `--overheads` times the run's
bookkeeping: the training diagnostics (`measure_overheads`) and writing a checkpoint.
It writes `<output>.json` and `<output>.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

AGENT_CONFIGS = {
    "ER": ("train_ER_DQN", "configs/ER.json", "ER"),
    "perfect_model": ("train_perfect_model_DQN", "configs/perfect_model.json", "perfect_model"),
    "simple_model": ("train_simple_model_DQN", "configs/simple_model.json", "simple_model"),
    "gaussian_latent": (
        "train_latent_model_DQN",
        "configs/gaussian_latent_model.json",
        "latent_model",
    ),
    "categorical_latent": (
        "train_latent_model_DQN",
        "configs/categorical_latent_model.json",
        "latent_model",
    ),
}
# The reference's figures on a 2-core AVX2 machine (issue 6): steps/s at 1 / 8 / 30 seeds,
# peak RSS in GB at 8 / 30 seeds, compile seconds (upper end of the range).
REFERENCE = {
    "ER": {"steps": {1: 480, 8: 412, 30: 422}, "rss": {8: 1.5, 30: 3.9}, "compile": 15},
    "perfect_model": {"steps": {1: 270, 8: 185, 30: 256}, "rss": {8: 0.8, 30: 1.1}, "compile": 18},
    "simple_model": {"steps": {1: 52, 8: 134, 30: 121}, "rss": {8: 1.8, 30: 4.4}, "compile": 21},
    "gaussian_latent": {"steps": {1: 70, 8: 124}, "rss": {8: 1.9}, "compile": 22},
    "categorical_latent": {"steps": {1: 30, 8: 28}, "rss": {8: 2.7}, "compile": 22},
}


# --------------------------------------------------------------------------------------------
# FLOPs counted from the layer sizes
# --------------------------------------------------------------------------------------------


def mlp_flops(fan_in: int, fan_out: int, cfg: dict) -> int:
    """Forward matmul FLOPs of one sample through an MLP of the config's torso."""
    h, n = cfg["num_hidden_units"], cfg["num_hidden_layers"]
    return 2 * (fan_in * h + (n - 1) * h * h + h * fan_out)


def flops_per_step(agent_type: str, cfg: dict, obs_size: int, num_actions: int) -> int:
    """Matmul FLOPs of one environment step of one seed with `updates_per_step` updates.

    Counted: acting (one Q forward; the latent agent also encodes), and per update the forward
    and backward passes (3x forward) of every trained network on its batch, plus the target and
    rollout forwards (1x). Element-wise work, sampling and the environment are not counted.
    """
    A, B = num_actions, cfg["batch_size"]
    L = cfg.get("rollout_length", 1)
    double = 2 if cfg.get("double_DQN") else 1  # double DQN adds an online forward on s'
    if agent_type == "latent_model":
        categorical = cfg["latent_type"] == "categorical"
        F = cfg["num_features"] * (cfg["feature_width"] if categorical else 1)
        enc_out = F if categorical else 2 * cfg["num_features"]
        q_in = F
    else:
        q_in = obs_size
    q = mlp_flops(q_in, A, cfg)
    q_step = lambda n: n * (3 * q + double * q)  # noqa: E731  Q fwd+bwd on s, target fwd on s'
    if agent_type == "ER":
        act, update = q, q_step(B)
    elif agent_type == "perfect_model":
        act, update = q, B * L * q + q_step(B * L)
    elif agent_type == "simple_model":
        model = mlp_flops(obs_size + A, 1, cfg) * 2 + mlp_flops(obs_size + A, obs_size, cfg)
        act, update = q, 3 * B * model + B * L * (q + model) + q_step(B * L)
    elif agent_type == "latent_model":
        encoder = mlp_flops(obs_size, enc_out, cfg)
        transition = mlp_flops(F + A, enc_out, cfg)
        heads = 2 * mlp_flops(F + A, 1, cfg)
        decoder = mlp_flops(F, obs_size * (2 if cfg.get("learn_obs_variance") else 1), cfg)
        model_step = 3 * B * (2 * encoder + transition + heads + decoder)
        rb = cfg["rollout_batch_size"] if cfg.get("seperate_rollout_batch_size") else B
        rollout = rb * encoder + rb * L * (q + transition + heads)
        act, update = encoder + q, model_step + rollout + q_step(rb * L)
    else:
        raise ValueError(agent_type)
    return act + cfg.get("updates_per_step", 1) * update


# --------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# --------------------------------------------------------------------------------------------


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """XLA's own dense float32 matmul throughput on this device: the roofline proxy."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        y = f(x)
    y.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def shipped_config(name: str, num_seeds: int, num_steps: int, **changes) -> tuple[dict, str]:
    """(raw config, agent type) of an agent's shipped config at the benchmark's settings."""
    _, config_path, agent_type = AGENT_CONFIGS[name]
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), config_path)) as f:
        raw = json.load(f)
    raw.update(num_seeds=num_seeds, eval_frequency=250, num_steps=num_steps)
    raw.update(training_start_time=0, **changes)
    return raw, agent_type


def step_size_key(agent_type: str) -> str:
    return "alpha_adam" if agent_type in ("ER", "perfect_model") else "Q_alpha"


def grid_changes(name: str) -> dict:
    """The 3 x 3 grid of `--grid`: step size and temperature at 1/2, 1 and 2 times shipped."""
    raw, agent_type = shipped_config(name, 1, 250)
    key = step_size_key(agent_type)
    return {
        key: [raw[key] / 2, raw[key], raw[key] * 2],
        "softmax_temp": [raw["softmax_temp"] / 2, raw["softmax_temp"], raw["softmax_temp"] * 2],
    }


def measure(
    name: str, num_seeds: int, timed_chunks: int, cache_dir: str, grid: bool = False
) -> dict:
    import importlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    import compilation
    import config
    import environments
    import loop

    module = AGENT_CONFIGS[name][0]
    build_agent = importlib.import_module(module).build_agent
    raw, agent_type = shipped_config(
        name, num_seeds, 250 * (timed_chunks + 1), **(grid_changes(name) if grid else {})
    )
    cfg = {**config.validate_config(raw, agent_type), "agent_type": agent_type, "seed": 0}
    points = config.grid_points(cfg)
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = build_agent(cfg, env)
    # As `experiment.main`: saved programs beside XLA's cache, so a second launch loads both.
    programs = os.path.join(cache_dir, "programs")
    run = compilation.compile_run(agent, env, cfg, len(points), program_dir=programs)
    hp = config.grid_hyperparameters(points)
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)

    start = time.perf_counter()
    state = run.init(keys)
    jax.block_until_ready(state)
    t0, train = jnp.int32(0), jnp.bool_(True)
    lowered = run.chunk.lower(state, t0, train, hp), run.evaluate.lower(state.learner, keys, hp)
    tick = time.perf_counter()
    chunk, evaluate = (stage.compile() for stage in lowered)
    xla_seconds = time.perf_counter() - tick  # XLA compile, or loading it from the cache
    compile_seconds = time.perf_counter() - start

    times = []
    for i in range(timed_chunks + 1):
        tick = time.perf_counter()
        state, _ = chunk(state, jnp.int32(250 * i), train, hp)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - tick)
    scores = evaluate(state.learner, keys, hp)
    assert np.all(np.isfinite(np.asarray(scores)))
    pairs = num_seeds * len(points)
    steps_per_second = 250 * pairs / float(np.median(times[1:]))

    flops = flops_per_step(agent_type, cfg, loop.observation_size(env), env.num_actions())
    gflops = flops * steps_per_second / 1e9
    peak = matmul_gflops()
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {
        "agent": name,
        "seeds": num_seeds,
        "grid_points": len(points),
        "compile_s": round(compile_seconds, 2),
        "xla_compile_s": round(xla_seconds, 2),
        "steps_per_s": round(steps_per_second, 1),
        "mflop_per_step": round(flops / 1e6, 2),
        "gflops": round(gflops, 2),
        "matmul_gflops": round(peak, 1),
        "roofline": round(gflops / peak, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "device_peak_gb": round(stats.get("peak_bytes_in_use", 0) / 2**30, 3),
        "device": f"{device.platform}: {device.device_kind}",
    }


def measure_overheads(name: str, num_seeds: int, timed_chunks: int, cache_dir: str) -> dict:
    """What the run's bookkeeping costs beside the training itself:
    - diagnostics: chunk time of the agent as it is against the same agent with its
      diagnostics dropped (`update` reports nothing, so XLA removes the reductions and the
      finiteness checks), `timed_chunks` of each, alternately (ABBA), in one process;
    - checkpoint: seconds to write one checkpoint (`checkpoint.save`, median of 3) and its
      size, and what 10 of them (the default interval) cost in a shipped run of 1M steps per
      seed at the measured chunk rate. With `timed_chunks` 0, only the checkpoint, of the
      initial state (same size: nothing is compressed)."""
    import importlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    import checkpoint
    import compilation
    import config
    import environments

    module = AGENT_CONFIGS[name][0]
    build_agent = importlib.import_module(module).build_agent
    raw, agent_type = shipped_config(name, num_seeds, 250 * (timed_chunks + 1))
    cfg = {**config.validate_config(raw, agent_type), "agent_type": agent_type, "seed": 0}
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = build_agent(cfg, env)
    hp = config.grid_hyperparameters([cfg])
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    device = jax.devices()[0]
    result = {
        "agent": name,
        "seeds": num_seeds,
        "device": f"{device.platform}: {device.device_kind}",
    }

    silent = agent._replace(update=lambda *a: (agent.update(*a)[0], {}), diagnostics=())
    variants = {
        label: [compilation.compile_run(a, env, cfg)]
        for label, a in (("with", agent), ("without", silent))
    }
    for entry in variants.values():
        entry += [entry[0].init(keys), []]  # run, state, chunk times
    for i in range(timed_chunks + 1 if timed_chunks else 0):  # the first compiles
        # ABBA order: a machine that speeds up or slows down over the run favours neither.
        for entry in list(variants.values())[:: 1 if i % 2 else -1]:
            run, state, times = entry
            tick = time.perf_counter()
            state, _ = run.chunk(state, jnp.int32(250 * i), jnp.bool_(True), hp)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - tick)
            entry[1] = state
    if timed_chunks:
        with_s, without_s = (float(np.median(entry[2][1:])) for entry in variants.values())
        result["chunk_s_with_diagnostics"] = round(with_s, 4)
        result["chunk_s_without"] = round(without_s, 4)
        result["diagnostics_overhead_pct"] = round(100 * (with_s / without_s - 1), 2)

    progress = checkpoint.Progress(1, 0, [0], {"reward_rates": [np.zeros((1, num_seeds))]})
    path = os.path.join(cache_dir, "benchmark.ckpt")
    writes = []
    for _ in range(3):
        tick = time.perf_counter()
        checkpoint.save(path, cfg, variants["with"][1], progress)
        writes.append(time.perf_counter() - tick)
    result["checkpoint_mb"] = round(os.path.getsize(path) / 1e6, 1)
    result["checkpoint_write_s"] = round(float(np.median(writes)), 3)
    if timed_chunks:
        run_s = 1_000_000 * without_s / 250  # the shipped run: 1M steps, at this chunk rate
        result["checkpoint_overhead_pct"] = round(
            100 * 10 * result["checkpoint_write_s"] / run_s, 4
        )
    return result


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def train_cli(name: str, raw: dict, cache_dir: str) -> dict:
    """One whole training run as a user starts it (`experiment.main`, saved programs and XLA's
    cache in `cache_dir`), in this process: its wall time and peak RSS."""
    import importlib

    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    import experiment

    module, _, agent_type = AGENT_CONFIGS[name]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.json")
        with open(path, "w") as f:
            json.dump(raw, f)
        start = time.perf_counter()
        build_agent = importlib.import_module(module).build_agent
        argv = [f"--config={path}", f"--output={os.path.join(folder, 'run')}", "--quiet"]
        experiment.main(agent_type, build_agent, argv)
        wall = time.perf_counter() - start
    return {
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


WORKERS = {"measure": measure, "overheads": measure_overheads, "train_cli": train_cli}


def in_fresh_process(worker: str, *args):
    """`WORKERS[worker](*args)` in a new Python process, so that its peak memory is its own."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker, json.dumps(args)]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__))
    )
    if done.returncode != 0:
        raise RuntimeError(f"{worker}{args}: {done.stderr.strip().splitlines()[-3:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_point(name: str, seeds: int, chunks: int, cache_dir: str, grid: bool = False) -> dict:
    return in_fresh_process("measure", name, seeds, chunks, cache_dir, grid)


def compare_grid(name: str, seeds: int, chunks: int, steps: int) -> dict:
    """The 3 x 3 grid as one run against its nine points as nine separate runs (each its own
    process, with empty caches: nine compilations), all of `steps` steps per seed; and the
    steady-state rate of the grid against one run of `seeds` seeds."""
    with tempfile.TemporaryDirectory() as cache_dir:
        grid_rate = run_point(name, seeds, chunks, cache_dir, grid=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        single_rate = run_point(name, seeds, chunks, cache_dir)
    changes = grid_changes(name)
    raw, _ = shipped_config(name, seeds, steps, save_params=False, **changes)
    with tempfile.TemporaryDirectory() as cache_dir:
        grid_run = in_fresh_process("train_cli", name, raw, cache_dir)
    singles = []
    (key_a, values_a), (key_b, values_b) = changes.items()
    for a in values_a:
        for b in values_b:
            with tempfile.TemporaryDirectory() as cache_dir:
                point = {**raw, key_a: a, key_b: b}
                singles.append(in_fresh_process("train_cli", name, point, cache_dir))
    return {
        "agent": name,
        "seeds": seeds,
        "steps_per_seed": steps,
        "grid_wall_s": grid_run["wall_s"],
        "separate_wall_s": round(sum(r["wall_s"] for r in singles), 1),
        "grid_compile_s": grid_rate["compile_s"],
        "single_compile_s": single_rate["compile_s"],
        "grid_steps_per_s": grid_rate["steps_per_s"],
        "single_steps_per_s": single_rate["steps_per_s"],
        "grid_over_single": round(grid_rate["steps_per_s"] / single_rate["steps_per_s"], 2),
        "grid_peak_rss_gb": grid_run["peak_rss_gb"],
        "single_peak_rss_gb": max(r["peak_rss_gb"] for r in singles),
        "device": grid_rate["device"],
    }


def seconds(result: dict, prefix: str) -> str:
    """'total (XLA part)' compile seconds: the XLA part of a second launch is a cache load."""
    total, xla = result.get(prefix + "compile_s"), result.get(prefix + "xla_compile_s")
    if total is None:
        return ""
    return f"{total:.1f}" + (f" ({xla:.1f})" if xla is not None else "")


def table(header: str, columns: list[str], rows: list[list]) -> str:
    """A markdown table under a header line."""
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: list[dict], header: str) -> str:
    columns = [
        "agent",
        "seeds",
        "steps/s",
        "ref steps/s (issue 6, another day)",
        "× ref",
        "GFLOP/s",
        "roofline",
        "peak RSS GB",
        "ref RSS GB",
        "compile s (XLA)",
        "2nd launch s (XLA)",
        "ref compile s",
    ]
    rows = []
    for r in results:
        points = r.get("grid_points", 1)
        ref = REFERENCE.get(r["agent"], {}) if points == 1 else {}
        ref_steps = ref.get("steps", {}).get(r["seeds"])
        rows.append(
            [
                r["agent"],
                r["seeds"] if points == 1 else f"{points} × {r['seeds']}",
                f"{r['steps_per_s']:.0f}",
                ref_steps or "",
                f"{r['steps_per_s'] / ref_steps:.2f}" if ref_steps else "",
                f"{r['gflops']:.1f}",
                f"{r['roofline']:.2f}",
                f"{r['peak_rss_gb']:.2f}",
                ref.get("rss", {}).get(r["seeds"], ""),
                seconds(r, ""),
                seconds(r, "second_launch_"),
                ref.get("compile", ""),
            ]
        )
    return table(header, columns, rows)


def grid_markdown(results: list[dict], header: str) -> str:
    columns = [
        "agent",
        "seeds",
        "steps per seed",
        "3x3 grid as one run: wall s (compile s)",
        "nine separate runs: wall s (compile s each)",
        "steady steps/s summed: grid / one run",
        "ratio",
        "peak RSS GB: grid / one run (x9)",
    ]
    rows = [
        [
            r["agent"],
            r["seeds"],
            r["steps_per_seed"],
            f"{r['grid_wall_s']:.0f} ({r['grid_compile_s']:.1f})",
            f"{r['separate_wall_s']:.0f} ({r['single_compile_s']:.1f})",
            f"{r['grid_steps_per_s']:.0f} / {r['single_steps_per_s']:.0f}",
            f"{r['grid_over_single']:.2f}",
            f"{r['grid_peak_rss_gb']:.2f} / {r['single_peak_rss_gb']:.2f} "
            f"({9 * r['single_peak_rss_gb']:.2f})",
        ]
        for r in results
    ]
    return table(header, columns, rows)


def overheads_markdown(results: list[dict], header: str) -> str:
    columns = [
        "agent",
        "seeds",
        "chunk s with diagnostics / without",
        "diagnostics overhead %",
        "checkpoint MB",
        "checkpoint write s",
        "checkpoints at the default interval: % of the shipped run",
    ]

    def number(r: dict, key: str, digits: int) -> str:
        return "" if r.get(key) is None else f"{r[key]:.{digits}f}"

    rows = [
        [
            r["agent"],
            r["seeds"],
            f"{number(r, 'chunk_s_with_diagnostics', 3)} / {number(r, 'chunk_s_without', 3)}",
            number(r, "diagnostics_overhead_pct", 1),
            number(r, "checkpoint_mb", 1),
            number(r, "checkpoint_write_s", 2),
            number(r, "checkpoint_overhead_pct", 3),
        ]
        for r in results
    ]
    return table(header, columns, rows)


def measure_point(args, name: str, seeds: int, grid: bool) -> dict:
    """One row of the table that the flags ask for, measured in fresh processes."""
    if args.grid:
        return compare_grid(name, seeds, args.chunks, args.grid_steps)
    with tempfile.TemporaryDirectory() as cache_dir:
        if args.overheads:
            return in_fresh_process("overheads", name, seeds, args.chunks, cache_dir)
        result = run_point(name, seeds, args.chunks, cache_dir, grid)
        if not (args.no_second_launch or grid):
            again = run_point(name, seeds, 1, cache_dir)
            result["second_launch_compile_s"] = again["compile_s"]
            result["second_launch_xla_compile_s"] = again["xla_compile_s"]
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--agents", nargs="+", default=list(AGENT_CONFIGS), choices=list(AGENT_CONFIGS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--chunks", type=int, default=4, help="timed chunks of 250 steps")
    parser.add_argument("--output", default="benchmarks/latest")
    parser.add_argument(
        "--no-second-launch",
        action="store_true",
        help="skip the second-launch (persistent cache) measurement",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="a 3x3 grid (step size x temperature) as one run against nine separate runs",
    )
    parser.add_argument(
        "--grid-steps", type=int, default=500, help="steps per seed of the --grid wall-time runs"
    )
    parser.add_argument(
        "--grid-seeds",
        nargs="*",
        type=int,
        default=[],
        help="also the steady-state rate of the 3x3 grid as one run at these seed counts",
    )
    parser.add_argument(
        "--overheads",
        action="store_true",
        help="cost of the diagnostics bookkeeping and of checkpoints",
    )
    args = parser.parse_args(argv)

    results = []
    for name in args.agents:
        points = [(seeds, False) for seeds in args.seeds]
        if not (args.grid or args.overheads):
            points += [(seeds, True) for seeds in args.grid_seeds]
        for seeds, grid in points:
            try:
                result = measure_point(args, name, seeds, grid)
            except RuntimeError as error:  # one point failing (out of memory, say) is reported
                print(json.dumps({"agent": name, "seeds": seeds, "error": str(error)}), flush=True)
                continue
            results.append(result)
            print(json.dumps(result), flush=True)

    import jax  # its version only: a GPU backend started here would hold the workers' memory

    device = results[0]["device"] if results else "no device"
    header = (
        f"Benchmark on {device}, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; jax {jax.__version__}, "
        f"python {platform.python_version()}; {time.strftime('%Y-%m-%d')}"
    )
    table = {True: grid_markdown, False: overheads_markdown if args.overheads else markdown}
    text = table[args.grid](results, header)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump({"header": header, "results": results}, f, indent=1)
    with open(args.output + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(WORKERS[sys.argv[2]](*json.loads(sys.argv[3]))))
    else:
        main()
