"""A training run from the command line (SPEC sections 1, 9-11): the entry point of every
`train_<agent>.py`.

config file -> validated config (`config.py`) -> the loop of `loop.py`, jitted and sharded over
the devices (`compilation.py`) -> greedy evaluation after each chunk -> `<output>.out` (and
`<output>.params`) written atomically (`outputs.py`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import environments
from compilation import compile_run, enable_compilation_cache
from config import ConfigError, load_config, traced_hyperparameters
from loop import Agent
from outputs import out_record, save_params, write_pickle_atomic


def parse_args(agent_type: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Train the {agent_type} agent.")
    parser.add_argument("--seed", "-s", type=int, default=0, help="master PRNG seed")
    parser.add_argument("--config", "-c", required=True, help="path to a JSON config")
    parser.add_argument("--output", "-o", default=agent_type, help="output prefix")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or logs")
    return parser.parse_args(argv)


def train(
    agent: Agent,
    env,
    cfg: dict,
    seed: int,
    output: str,
    quiet: bool = False,
    program_dir: str | None = None,
) -> dict:
    """The whole run; returns the `.out` record it wrote last. `program_dir`: see
    `compile_run`."""
    from tqdm import tqdm

    num_seeds, chunk_steps = cfg["num_seeds"], cfg["eval_frequency"]
    num_chunks = cfg["num_steps"] // chunk_steps
    run = compile_run(agent, env, cfg, program_dir=program_dir)
    hp = traced_hyperparameters(cfg)
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(seed))
    state = run.init(jax.random.split(init_key, num_seeds))

    reward_rates, eval_times = [], []
    record = out_record(cfg, reward_rates, eval_times)
    steps_since_save = 0
    bar = tqdm(range(num_chunks), disable=quiet, unit="chunk", dynamic_ncols=True)
    for i in bar:
        t0 = i * chunk_steps
        if cfg["save_params"] and steps_since_save >= cfg["save_frequency"]:
            save_params(f"{output}.params", agent, state.learner, num_seeds)
            steps_since_save = 0
        train_now = t0 >= cfg["training_start_time"]
        state, _ = run.chunk(state, jnp.int32(t0), jnp.bool_(train_now), hp)
        keys = jax.random.split(jax.random.fold_in(eval_key, i), num_seeds)
        scores = np.asarray(run.evaluate(state.learner, keys, hp), dtype=np.float32)
        reward_rates.append(scores)
        eval_times.append(t0)
        steps_since_save += chunk_steps
        record = out_record(cfg, reward_rates, eval_times)
        write_pickle_atomic(f"{output}.out", record)  # Q8: every evaluation, not only at the end
        bar.set_postfix(time=t0 + chunk_steps, mean_return=f"{scores.mean():.3f}")
        if not quiet:
            bar.write(f"t={t0 + chunk_steps} returns: " + " ".join(f"{s:.3f}" for s in scores))
    if cfg["save_params"]:
        save_params(f"{output}.params", agent, state.learner, num_seeds)
    return record


def main(agent_type: str, build_agent: Callable[[dict, Any], Agent], argv=None) -> dict:
    """Entry point of every `train_*.py`: parse flags, validate the config before anything is
    compiled (exit status 2 with one line on a bad config), then train."""
    args = parse_args(agent_type, argv)
    try:
        cfg = load_config(args.config, agent_type)
    except ConfigError as error:
        print(f"{args.config}: config error: {error}", file=sys.stderr)
        sys.exit(2)
    cfg = {**cfg, "agent_type": agent_type, "seed": args.seed}
    program_dir = enable_compilation_cache()
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    start = time.time()
    agent = build_agent(cfg, env)
    record = train(agent, env, cfg, args.seed, args.output, args.quiet, program_dir)
    if not args.quiet:
        steps = cfg["num_steps"] * cfg["num_seeds"]
        elapsed = time.time() - start
        print(
            f"done: {steps} env steps in {elapsed:.1f} s ({steps / elapsed:.0f} steps/s, "
            f"all seeds, compilation included)",
            file=sys.stderr,
        )
    return record
