"""Speed, FLOP rate and memory of the training loop of each agent.

    python benchmark.py              # all agents, 1 and 8 seeds (< 10 min on 2 cores)
    python benchmark.py --agents ER simple_model --seeds 1 8 30 --output benchmarks/cpu
    python benchmark.py --seeds 30 --grid-seeds 30      # also a 3x3 grid x 30 seeds as one run
    python benchmark.py --grid --agents ER simple_model --seeds 8   # grid vs nine runs
    python benchmark.py --overheads --seeds 8           # diagnostics and checkpoint costs
    python benchmark.py --agents ER --config changes.json   # another environment, say

Each (agent, seeds) point runs in a fresh subprocess (so peak memory is that point's own) on its
shipped config (`agent_registry.py`; `--config` names a JSON object of keys that replace the
shipped ones: another environment, smaller networks), set up as every run is
(`experiment.prepare`) and timed by `training/measure.py`, with `eval_frequency` 250 and the
shipped network, batch and buffer sizes. It reports:
- compile: seconds to trace, lower and compile the run's jitted functions with empty caches,
  and again in a second process that finds them in the caches (a second launch: saved programs
  instead of tracing and lowering, `saved_programs.SavedProgramJit`, and XLA's persistent
  cache); in brackets the XLA part alone (`Lowered.compile`, a cache load on a second launch);
- steps/s: environment steps per second summed over seeds, training on, after compilation
  (median over timed chunks, evaluation excluded);
- GFLOP/s: matrix-multiply FLOPs per environment step, counted from the layer sizes by
  each agent's `flops_per_step` (its definition; forward = 2·fan_in·fan_out per layer and sample,
  forward + backward = 3× forward, target and rollout forwards once), times steps/s;
- roofline: that rate over XLA's own dense float32 matmul throughput measured in the same
  process (`measure.matmul_gflops`);
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

import jax
import jax.numpy as jnp
import numpy as np

from agent_registry import AGENTS, ROOT
from training import checkpoint, experiment, measure, results
from training.flags import OneLineErrorParser
from training.schema import SCHEMA, checkpoint_every

CHUNK_STEPS = 250  # environment steps per timed chunk
SHIPPED_RUN_STEPS = 1_000_000  # a shipped config's run, for the checkpoints' share of it
# The reference's figures on a 2-core AVX2 machine (issue 6): steps/s at 1 / 8 / 30 seeds,
# peak RSS in GB at 8 / 30 seeds, compile seconds (upper end of the range). Data about the
# paper's five agents: an agent of the registry without a row here is measured without them.
REFERENCE = {
    "ER": {"steps": {1: 480, 8: 412, 30: 422}, "rss": {8: 1.5, 30: 3.9}, "compile": 15},
    "perfect_model": {"steps": {1: 270, 8: 185, 30: 256}, "rss": {8: 0.8, 30: 1.1}, "compile": 18},
    "simple_model": {"steps": {1: 52, 8: 134, 30: 121}, "rss": {8: 1.8, 30: 4.4}, "compile": 21},
    "gaussian_latent": {"steps": {1: 70, 8: 124}, "rss": {8: 1.9}, "compile": 22},
    "categorical_latent": {"steps": {1: 30, 8: 28}, "rss": {8: 2.7}, "compile": 22},
}


# --------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# --------------------------------------------------------------------------------------------


def shipped_config(
    name: str, num_seeds: int, num_steps: int, config_changes: dict | None = None, **changes
) -> dict:
    """An agent's shipped config, with `config_changes` (`--config`), at the benchmark's settings
    (chunks of `CHUNK_STEPS`)."""
    raw = {**AGENTS[name].shipped(), **(config_changes or {})}
    raw.update(num_seeds=num_seeds, eval_frequency=CHUNK_STEPS, num_steps=num_steps)
    raw.update(training_start_time=0, **changes)
    return raw


def grid_changes(name: str) -> dict:
    """The 3 x 3 grid of `--grid`: step size and temperature at 1/2, 1 and 2 times shipped."""
    raw, key = AGENTS[name].shipped(), AGENTS[name].step_size_key
    return {
        key: [raw[key] / 2, raw[key], raw[key] * 2],
        "softmax_temp": [raw["softmax_temp"] / 2, raw["softmax_temp"], raw["softmax_temp"] * 2],
    }


def prepare(name: str, raw: dict) -> experiment.Setup:
    """The run of `raw`, set up as every run is (`experiment.prepare`)."""
    spec = AGENTS[name]
    return experiment.prepare(spec.definition, raw)


def measure_agent(
    name: str,
    num_seeds: int,
    timed_chunks: int,
    cache_dir: str,
    grid: bool = False,
    precision: str = "default",
    config_changes: dict | None = None,
) -> dict:
    """One agent's compile time, steady rate, FLOP rate and memory at `num_seeds` (a 3 x 3
    grid of them with `grid`) and `matmul_precision` `precision`, with saved programs and
    XLA's cache in `cache_dir`."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir  # as a launch with that cache
    program_dir = experiment.enable_compilation_cache()
    changes = {**(grid_changes(name) if grid else {}), "matmul_precision": precision}
    steps = CHUNK_STEPS * (timed_chunks + 1)
    raw = shipped_config(name, num_seeds, steps, config_changes, **changes)
    setup = prepare(name, raw)
    timing, _ = measure.time_run(setup, program_dir, on_chunks=timed_chunks + 1)
    steps_per_second = CHUNK_STEPS * timing.pairs / float(np.median(timing.on_s[1:]))
    env, cfg = setup.env, setup.cfg
    sizes = env.observation_size, env.num_actions()
    flops = AGENTS[name].definition.flops_per_step(cfg, *sizes)
    gflops = flops * steps_per_second / 1e9
    peak = measure.matmul_gflops()
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {
        "agent": name,
        "seeds": num_seeds,
        **({"config_changes": config_changes} if config_changes else {}),
        "grid_points": len(setup.points),
        "matmul_precision": precision,
        "compile_s": round(timing.compile_s, 2),
        "xla_compile_s": round(timing.xla_compile_s, 2),
        "steps_per_s": round(steps_per_second, 1),
        "mflop_per_step": round(flops / 1e6, 2),
        "gflops": round(gflops, 2),
        "matmul_gflops": round(peak, 1),
        "roofline": round(gflops / peak, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "device_peak_gb": round(stats.get("peak_bytes_in_use", 0) / 2**30, 3),
        "device": f"{device.platform}: {device.device_kind}",
    }


def measure_overheads(
    name: str,
    num_seeds: int,
    timed_chunks: int,
    cache_dir: str,
    precision: str = "default",
    config_changes: dict | None = None,
) -> dict:
    """What the run's bookkeeping costs beside the training itself:
    - diagnostics: chunk time of the agent as it is against the same agent with its
      diagnostics dropped (`update` reports nothing, so XLA removes the reductions and the
      finiteness checks), `timed_chunks` of each, alternately (ABBA), in one process;
    - checkpoint: seconds to write one checkpoint (`checkpoint.save`, median of 3) and its
      size, and what the default number of them costs in a shipped run of 1M steps per seed
      at the measured chunk rate. With `timed_chunks` 0, only the checkpoint, of the initial
      state (same size: nothing is compressed). `precision`: the runs' `matmul_precision`."""
    steps = CHUNK_STEPS * (timed_chunks + 1)
    raw = shipped_config(name, num_seeds, steps, config_changes, matmul_precision=precision)
    setup = prepare(name, raw)
    keys, _ = experiment.run_keys(0, num_seeds)
    device = jax.devices()[0]
    result = {
        "agent": name,
        "seeds": num_seeds,
        "matmul_precision": precision,
        "device": f"{device.platform}: {device.device_kind}",
    }

    agent = setup.agent
    silent = agent._replace(update=lambda *a: (agent.update(*a)[0], {}), diagnostics=())
    variants = {
        label: [experiment.compile_setup(setup, agent=a)]
        for label, a in (("with", agent), ("without", silent))
    }
    for entry in variants.values():
        entry += [entry[0].init(keys), []]  # run, state, chunk times
    for i in range(timed_chunks + 1 if timed_chunks else 0):  # the first compiles
        # ABBA order: a machine that speeds up or slows down over the run favours neither.
        for entry in list(variants.values())[:: 1 if i % 2 else -1]:
            run, state, times = entry
            tick = time.perf_counter()
            state, _ = run.chunk(state, jnp.int32(CHUNK_STEPS * i), jnp.bool_(True), setup.hp)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - tick)
            entry[1] = state
    if timed_chunks:
        with_s, without_s = (float(np.median(entry[2][1:])) for entry in variants.values())
        result["chunk_s_with_diagnostics"] = round(with_s, 4)
        result["chunk_s_without"] = round(without_s, 4)
        result["diagnostics_overhead_pct"] = round(100 * (with_s / without_s - 1), 2)

    progress = checkpoint.Progress(1, 0, [0], {results.DEFAULT_METRIC: [np.zeros((1, num_seeds))]})
    path = os.path.join(cache_dir, "benchmark.ckpt")
    writes = []
    for _ in range(3):
        tick = time.perf_counter()
        checkpoint.save(path, setup.cfg, variants["with"][1], progress, setup.provenance)
        writes.append(time.perf_counter() - tick)
    result["checkpoint_mb"] = round(os.path.getsize(path) / 1e6, 1)
    result["checkpoint_write_s"] = round(float(np.median(writes)), 3)
    if timed_chunks:
        shipped = {"num_steps": SHIPPED_RUN_STEPS, "checkpoint_frequency": None}
        count = SHIPPED_RUN_STEPS // checkpoint_every(shipped)
        run_s = SHIPPED_RUN_STEPS * without_s / CHUNK_STEPS  # the shipped run, at this rate
        result["checkpoint_overhead_pct"] = round(
            100 * count * result["checkpoint_write_s"] / run_s, 4
        )
    return result


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def train_cli(name: str, raw: dict, cache_dir: str) -> dict:
    """One whole training run as a user starts it (`experiment.run`, saved programs and XLA's
    cache in `cache_dir`), in this process: its wall time and peak RSS."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        AGENTS[name].run(raw, os.path.join(folder, "run"), quiet=True)
        wall = time.perf_counter() - start
    return {
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


WORKERS = {"measure": measure_agent, "overheads": measure_overheads, "train_cli": train_cli}


def in_fresh_process(worker: str, *args):
    """`WORKERS[worker](*args)` in a new Python process, so that its peak memory is its own."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker, json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{worker}{args}: {done.stderr.strip().splitlines()[-3:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_point(
    name: str,
    seeds: int,
    chunks: int,
    cache_dir: str,
    grid=False,
    precision="default",
    config_changes=None,
) -> dict:
    worker_args = (name, seeds, chunks, cache_dir, grid, precision, config_changes)
    return in_fresh_process("measure", *worker_args)


def compare_grid(
    name: str, seeds: int, chunks: int, steps: int, precision="default", config_changes=None
) -> dict:
    """The 3 x 3 grid as one run against its nine points as nine separate runs (each its own
    process, with empty caches: nine compilations), all of `steps` steps per seed; and the
    steady-state rate of the grid against one run of `seeds` seeds."""
    with tempfile.TemporaryDirectory() as cache_dir:
        grid_rate = run_point(name, seeds, chunks, cache_dir, True, precision, config_changes)
    with tempfile.TemporaryDirectory() as cache_dir:
        single_rate = run_point(name, seeds, chunks, cache_dir, False, precision, config_changes)
    changes = grid_changes(name)
    raw = shipped_config(
        name, seeds, steps, config_changes, save_params=False, matmul_precision=precision, **changes
    )
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
        "matmul_precision": precision,
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


def table(header: str, columns: dict, results: list[dict]) -> str:
    """A markdown table under a header line: one row per result, one column per entry of
    `columns` (its title -> the function of a result that gives the cell)."""
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        lines.append("| " + " | ".join(str(cell(r)) for cell in columns.values()) + " |")
    return "\n".join(lines) + "\n"


def number(r: dict, key: str, digits: int) -> str:
    return "" if r.get(key) is None else f"{r[key]:.{digits}f}"


def reference(r: dict) -> dict:
    """The reference's figures for a result's agent (none for a grid or a changed config)."""
    shipped = r.get("grid_points", 1) == 1 and not r.get("config_changes")
    return REFERENCE.get(r["agent"], {}) if shipped else {}


def reference_steps(r: dict):
    return reference(r).get("steps", {}).get(r["seeds"])


def markdown(results: list[dict], header: str) -> str:
    def seeds(r):
        points = r.get("grid_points", 1)
        return r["seeds"] if points == 1 else f"{points} × {r['seeds']}"

    def times_reference(r):
        ref_steps = reference_steps(r)
        return f"{r['steps_per_s'] / ref_steps:.2f}" if ref_steps else ""

    columns = {
        "agent": lambda r: r["agent"],
        "seeds": seeds,
        "steps/s": lambda r: number(r, "steps_per_s", 0),
        "ref steps/s (issue 6, another day)": lambda r: reference_steps(r) or "",
        "× ref": times_reference,
        "GFLOP/s": lambda r: number(r, "gflops", 1),
        "roofline": lambda r: number(r, "roofline", 2),
        "peak RSS GB": lambda r: number(r, "peak_rss_gb", 2),
        "ref RSS GB": lambda r: reference(r).get("rss", {}).get(r["seeds"], ""),
        "compile s (XLA)": lambda r: seconds(r, ""),
        "2nd launch s (XLA)": lambda r: seconds(r, "second_launch_"),
        "ref compile s": lambda r: reference(r).get("compile", ""),
    }
    return table(header, columns, results)


def grid_markdown(results: list[dict], header: str) -> str:
    columns = {
        "agent": lambda r: r["agent"],
        "seeds": lambda r: r["seeds"],
        "steps per seed": lambda r: r["steps_per_seed"],
        "3x3 grid as one run: wall s (compile s)": lambda r: (
            f"{r['grid_wall_s']:.0f} ({r['grid_compile_s']:.1f})"
        ),
        "nine separate runs: wall s (compile s each)": lambda r: (
            f"{r['separate_wall_s']:.0f} ({r['single_compile_s']:.1f})"
        ),
        "steady steps/s summed: grid / one run": lambda r: (
            f"{r['grid_steps_per_s']:.0f} / {r['single_steps_per_s']:.0f}"
        ),
        "ratio": lambda r: number(r, "grid_over_single", 2),
        "peak RSS GB: grid / one run (x9)": lambda r: (
            f"{r['grid_peak_rss_gb']:.2f} / {r['single_peak_rss_gb']:.2f} "
            f"({9 * r['single_peak_rss_gb']:.2f})"
        ),
    }
    return table(header, columns, results)


def overheads_markdown(results: list[dict], header: str) -> str:
    columns = {
        "agent": lambda r: r["agent"],
        "seeds": lambda r: r["seeds"],
        "chunk s with diagnostics / without": lambda r: (
            f"{number(r, 'chunk_s_with_diagnostics', 3)} / {number(r, 'chunk_s_without', 3)}"
        ),
        "diagnostics overhead %": lambda r: number(r, "diagnostics_overhead_pct", 1),
        "checkpoint MB": lambda r: number(r, "checkpoint_mb", 1),
        "checkpoint write s": lambda r: number(r, "checkpoint_write_s", 2),
        "checkpoints at the default interval: % of the shipped run": lambda r: number(
            r, "checkpoint_overhead_pct", 3
        ),
    }
    return table(header, columns, results)


def measure_point(args, name: str, seeds: int, grid: bool) -> dict:
    """One row of the table that the flags ask for, measured in fresh processes."""
    precision, changes = args.matmul_precision, args.config
    if args.grid:
        return compare_grid(name, seeds, args.chunks, args.grid_steps, precision, changes)
    with tempfile.TemporaryDirectory() as cache_dir:
        if args.overheads:
            worker_args = (name, seeds, args.chunks, cache_dir, precision, changes)
            return in_fresh_process("overheads", *worker_args)
        result = run_point(name, seeds, args.chunks, cache_dir, grid, precision, changes)
        if not (args.no_second_launch or grid):
            again = run_point(name, seeds, 1, cache_dir, False, precision, changes)
            result["second_launch_compile_s"] = again["compile_s"]
            result["second_launch_xla_compile_s"] = again["xla_compile_s"]
    return result


def config_changes_file(path: str) -> dict:
    """An argparse type: the JSON object in file `path`."""
    try:
        with open(path) as f:
            changes = json.load(f)
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"cannot read {path} as JSON: {error}") from None
    if not isinstance(changes, dict):
        raise argparse.ArgumentTypeError(f"{path} must hold a JSON object of config keys")
    return changes


def check_config_changes(parser, args) -> None:
    """Every agent's config with `--config` is valid (one line, exit 2, before any run)."""
    for name in args.agents if args.config else ():
        try:
            prepare(name, shipped_config(name, 1, CHUNK_STEPS, args.config))
        except experiment.RunError as error:
            parser.error(f"--config {name}: {error}")


def main(argv=None) -> None:
    parser = OneLineErrorParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
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
        "--matmul-precision",
        choices=SCHEMA["matmul_precision"].choices,
        default="default",
        help="the runs' matmul_precision config key (default: JAX's default)",
    )
    parser.add_argument(
        "--overheads",
        action="store_true",
        help="cost of the diagnostics bookkeeping and of checkpoints",
    )
    parser.add_argument(
        "--config",
        type=config_changes_file,
        help="JSON file of config keys that replace the shipped config's (e.g. environment)",
    )
    args = parser.parse_args(argv)
    check_config_changes(parser, args)

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

    # jax's version only: a GPU backend started here would hold the workers' memory.
    device = results[0]["device"] if results else "no device"
    header = (
        f"Benchmark on {device}, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; jax {jax.__version__}, "
        f"python {platform.python_version()}; matmul_precision {args.matmul_precision}; "
        f"{time.strftime('%Y-%m-%d')}"
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
