#!/usr/bin/env bash
# The GPU benchmark of benchmarks/gpu_*.md, on a machine whose Python has jax[cuda] but not
# dm-haiku: pass a folder of wheels to install first (dm-haiku, jmp), and an output folder.
#   bash benchmarks/gpu.sh .whl /tmp/out
# Steps: a correctness check (a 2 x 2 grid equals its single runs; a diverging pair is caught),
# then the benchmark: every agent at 30 seeds and a 3 x 3 grid x 30 seeds as one run, then 100,
# 8 and 1 seeds. Each point's JSON line is printed (and kept in $out/*.log) as it finishes, so a
# time limit keeps what is done.
set -u
wheels=${1:-}
out=${2:-benchmarks}
mkdir -p "$out"
if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=
nvidia-smi -L
python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
if ! python3 -c "import compilation, jax; jax.devices()"; then
    # A jaxlib without the CPU flag that compilation.py adds: name it without setting it.
    echo "XLA rejected a flag of compilation.py; running with it unset"
    export XLA_FLAGS="--xla_dump_hlo_module_re=--xla_cpu_experimental_ynn_fusion_type"
fi
python3 - <<'EOF' 2>&1 | tail -20 | tee "$out/gpu_check.log"
import sys, json, os, tempfile
sys.path.insert(0, "tests")
import numpy as np
from conftest import tiny_config
import config, environments, experiment, train_ER_DQN
out = tempfile.mkdtemp()
def run(raw, name):
    cfg = {**config.validate_config(raw, "ER"), "agent_type": "ER", "seed": 0}
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    return experiment.train(train_ER_DQN.build_agent(cfg, env), env, cfg, 0, f"{out}/{name}", quiet=True)
raw = tiny_config("ER", alpha_adam=[1e-3, 1e30], softmax_temp=[0.1, 0.4], num_steps=300)
grid = run(raw, "grid")
print("diverged per point:", [bool(np.any(r["metrics"]["diverged"][-1])) for r in grid])
for g in (0, 1):
    c = grid[g]["config"]
    single = run({**raw, "alpha_adam": c.alpha_adam, "softmax_temp": c.softmax_temp}, f"s{g}")[0]
    diffs = {k: float(np.nanmax(np.abs(np.asarray(grid[g]["metrics"][k], float) - np.asarray(single["metrics"][k], float)), initial=0)) for k in single["metrics"]}
    print("point", g, "max |grid - single|:", diffs)
EOF
python3 benchmark.py --seeds 30 --grid-seeds 30 --chunks 2 --no-second-launch \
    --output "$out/gpu_30_seeds_and_grid" 2>&1 | grep "^{" | tee "$out/gpu_30.log"
python3 benchmark.py --seeds 100 8 1 --chunks 2 --no-second-launch \
    --output "$out/gpu_1_8_100_seeds" 2>&1 | grep "^{" | tee "$out/gpu_1_8_100.log"
