"""Speed, FLOP rate and memory of the training loop of each agent.

    python benchmark.py              # all agents, 1 and 8 seeds (< 10 min on 2 cores)
    python benchmark.py --agents ER simple_model --seeds 1 8 30 --output benchmarks/cpu

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


def measure(name: str, num_seeds: int, timed_chunks: int, cache_dir: str) -> dict:
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

    module, config_path, agent_type = AGENT_CONFIGS[name]
    build_agent = importlib.import_module(module).build_agent
    with open(config_path) as f:
        raw = json.load(f)
    raw.update(num_seeds=num_seeds, eval_frequency=250, num_steps=250 * (timed_chunks + 1))
    raw.update(training_start_time=0)
    cfg = {**config.validate_config(raw, agent_type), "agent_type": agent_type, "seed": 0}
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = build_agent(cfg, env)
    # As `experiment.main`: saved programs beside XLA's cache, so a second launch loads both.
    run = compilation.compile_run(agent, env, cfg, program_dir=os.path.join(cache_dir, "programs"))
    hp = config.traced_hyperparameters(cfg)
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
    steps_per_second = 250 * num_seeds / float(np.median(times[1:]))

    flops = flops_per_step(agent_type, cfg, loop.observation_size(env), env.num_actions())
    gflops = flops * steps_per_second / 1e9
    peak = matmul_gflops()
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {
        "agent": name,
        "seeds": num_seeds,
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


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def run_point(name: str, seeds: int, chunks: int, cache_dir: str) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        str(seeds),
        str(chunks),
        cache_dir,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__))
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} x {seeds}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def seconds(result: dict, prefix: str) -> str:
    """'total (XLA part)' compile seconds: the XLA part of a second launch is a cache load."""
    total, xla = result.get(prefix + "compile_s"), result.get(prefix + "xla_compile_s")
    if total is None:
        return ""
    return f"{total:.1f}" + (f" ({xla:.1f})" if xla is not None else "")


def markdown(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| agent | seeds | steps/s | ref steps/s | × ref | GFLOP/s | roofline | peak RSS GB | "
        "ref RSS GB | compile s (XLA) | 2nd launch s (XLA) | ref compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = REFERENCE.get(r["agent"], {})
        ref_steps = ref.get("steps", {}).get(r["seeds"])
        ratio = f"{r['steps_per_s'] / ref_steps:.2f}" if ref_steps else ""
        lines.append(
            f"| {r['agent']} | {r['seeds']} | {r['steps_per_s']:.0f} | {ref_steps or ''} | "
            f"{ratio} | {r['gflops']:.1f} | {r['roofline']:.2f} | {r['peak_rss_gb']:.2f} | "
            f"{ref.get('rss', {}).get(r['seeds'], '')} | {seconds(r, '')} | "
            f"{seconds(r, 'second_launch_')} | {ref.get('compile', '')} |"
        )
    return "\n".join(lines) + "\n"


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
    args = parser.parse_args(argv)

    results = []
    for name in args.agents:
        for seeds in args.seeds:
            with tempfile.TemporaryDirectory() as cache_dir:
                result = run_point(name, seeds, args.chunks, cache_dir)
                if not args.no_second_launch:
                    again = run_point(name, seeds, 1, cache_dir)
                    result["second_launch_compile_s"] = again["compile_s"]
                    result["second_launch_xla_compile_s"] = again["xla_compile_s"]
            results.append(result)
            print(json.dumps(result), flush=True)

    import jax

    header = (
        f"Benchmark on {results[0]['device']}, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; jax {jax.__version__}, "
        f"python {platform.python_version()}; {time.strftime('%Y-%m-%d')}"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump({"header": header, "results": results}, f, indent=1)
    with open(args.output + ".md", "w") as f:
        f.write(markdown(results, header))
    print(markdown(results, header))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, seeds, chunks, cache_dir = (
            sys.argv[2],
            int(sys.argv[3]),
            int(sys.argv[4]),
            sys.argv[5],
        )
        print(json.dumps(measure(name, seeds, chunks, cache_dir)))
    else:
        main()
