"""Hyperparameter grids: lists of traced values in a config, trained as one compiled run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, SCRIPTS, definition, load_pickle, run_tool, tiny_config

import environments
import train_ER_DQN
from training import compilation, config, experiment, loop

# ------------------------------------------------------------------------------------------
# Grids in the config
# ------------------------------------------------------------------------------------------


def config_error(raw, name="ER") -> str:
    with pytest.raises(config.ConfigError) as info:
        config.validate_config(raw, definition(name))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_each_element_of_a_grid_axis_is_checked_and_named():
    raw = tiny_config("simple_model", Q_alpha=[5e-5, 1e-4, -1.0])
    assert config_error(raw, "simple_model") == "Q_alpha[2]: expected 0.0 < Q_alpha, got -1.0"
    assert config_error(tiny_config("ER", gamma=[0.9, "0.5"])).startswith(
        "gamma[1]: expected a number"
    )
    assert config_error(tiny_config("ER", softmax_temp=[0.1, float("nan")])).startswith(
        "softmax_temp[1]: expected a finite number"
    )


@pytest.mark.parametrize("key, value", [("num_hidden_units", [16, 32]), ("batch_size", [8])])
def test_a_key_that_changes_the_program_cannot_be_a_grid_axis(key, value):
    message = config_error(tiny_config("ER", **{key: value}))
    assert message.startswith(f"{key}: cannot be a grid axis") and "changes shapes" in message


def test_environment_lists_and_empty_or_repeated_axes_are_errors():
    assert config_error(tiny_config("ER", environment=["ProcMaze"])).startswith(
        "environment: cannot be a grid axis"
    )
    assert config_error(tiny_config("ER", alpha_adam=[])).startswith("alpha_adam: an empty list")
    assert config_error(tiny_config("ER", alpha_adam=[1e-3, 1e-3])).startswith("alpha_adam[1]:")


def test_grid_points_are_the_cartesian_product_in_key_order():
    cfg = config.validate_config(
        tiny_config("ER", softmax_temp=[0.1, 0.4], gamma=[0.9, 0.5, 0.1]), definition("ER")
    )
    assert list(config.grid_axes(cfg)) == ["gamma", "softmax_temp"]
    points = config.grid_points(cfg)
    assert [(p["gamma"], p["softmax_temp"]) for p in points] == [
        (g, t) for g in (0.9, 0.5, 0.1) for t in (0.1, 0.4)
    ]
    assert all(p["alpha_adam"] == 1e-3 for p in points)  # the other keys as given
    hp = config.grid_hyperparameters(points)
    np.testing.assert_allclose(hp["gamma"], [0.9, 0.9, 0.5, 0.5, 0.1, 0.1])
    assert hp["alpha_adam"].shape == (6,)
    assert config.point_name(points[1], config.grid_axes(cfg)) == "gamma=0.9_softmax_temp=0.4"
    single = config.validate_config(tiny_config("ER"), definition("ER"))
    assert config.grid_points(single) == [single] and not config.grid_axes(single)


# ------------------------------------------------------------------------------------------
# One run for the whole grid: each point equals its single run
# ------------------------------------------------------------------------------------------

GRID = {"alpha_adam": [1e-3, 3e-3], "softmax_temp": [0.1, 0.4]}


def run_cli(raw: dict, tmp_path, output: str, cache: str, extra=()):
    path = tmp_path / f"{output}.json"
    path.write_text(json.dumps(raw))
    return subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, SCRIPTS["ER"]),
            "--seed=3",
            f"--config={path}",
            f"--output={tmp_path / output}",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        # One cache for the runs of this test: the four single runs share one program.
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": cache},
    )


@pytest.fixture(scope="module")
def grid_and_single_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("grid")
    cache = str(tmp_path / "cache")
    raw = tiny_config("ER", num_steps=300, **GRID)
    grid = run_cli(raw, tmp_path, "grid", cache)
    singles = {}
    for alpha in GRID["alpha_adam"]:
        for temp in GRID["softmax_temp"]:
            name = f"alpha_adam={alpha!r}_softmax_temp={temp!r}"
            point = {**raw, "alpha_adam": alpha, "softmax_temp": temp}
            singles[name] = run_cli(point, tmp_path, f"single_{name}", cache, ["--quiet"])
    return tmp_path, grid, singles


def test_a_grid_writes_one_standard_out_and_params_per_point(grid_and_single_runs):
    tmp_path, grid, singles = grid_and_single_runs
    assert grid.returncode == 0, grid.stderr[-3000:]
    assert "returns (best point alpha_adam=" in grid.stdout  # the log names the best point
    assert "it/s" not in grid.stderr  # no bar written into a log (stderr is not a terminal)
    for name in singles:
        out = load_pickle(tmp_path / f"grid_{name}.out")
        cfg = out["config"]
        assert f"alpha_adam={cfg.alpha_adam!r}_softmax_temp={cfg.softmax_temp!r}" == name
        assert isinstance(cfg.alpha_adam, float) and cfg.seed == 3  # scalars, as a single run
        assert out["metrics"]["eval_times"] == [0, 50, 100, 150, 200, 250]
        params = load_pickle(tmp_path / f"grid_{name}.params")
        assert len(params["Q"]) == 2
    assert not (tmp_path / "grid.out").exists()


def test_every_grid_point_equals_its_single_run(grid_and_single_runs):
    """Common random numbers: point g, seed s starts from the keys of the single run's seed s,
    so on the same machine the curves agree. The grid's pairs run as larger batches than a
    single run's, so XLA may pick kernels that round differently: then the runs agree to float
    rounding at first and drift apart over a long run. On this 2-core CPU the 300-step runs
    here are identical; the check allows rounding (1e-4) but not a different run."""
    tmp_path, grid, singles = grid_and_single_runs
    assert grid.returncode == 0, grid.stderr[-3000:]
    for name, single in singles.items():
        assert single.returncode == 0, single.stderr[-3000:]
        point = load_pickle(tmp_path / f"grid_{name}.out")["metrics"]
        alone = load_pickle(tmp_path / f"single_{name}.out")["metrics"]
        assert list(point) == list(alone)
        for key in point:
            np.testing.assert_allclose(
                np.asarray(point[key], float), np.asarray(alone[key], float), rtol=1e-4, atol=1e-4
            )
        a, b = (load_pickle(tmp_path / f"{p}_{name}.params") for p in ("grid", "single"))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
    curves = [
        np.asarray(load_pickle(tmp_path / f"grid_{name}.out")["metrics"]["q_loss"][1:])
        for name in singles
    ]
    assert not np.allclose(curves[0], curves[-1])  # the points are different runs


def test_the_grid_outputs_plot_and_summarise(grid_and_single_runs, tmp_path):
    grid_dir = grid_and_single_runs[0]
    files = sorted(str(p) for p in grid_dir.glob("grid_*.out"))
    plot = run_tool("plot_metric.py", "--data", *files, "--no-show", "--save", tmp_path / "a.png")
    assert plot.returncode == 0, plot.stderr
    summary = run_tool(
        "sweep_summary.py", "--data", *files, "--no-show", "--save", tmp_path / "b.png"
    )
    assert summary.returncode == 0, summary.stderr
    assert "best: alpha_adam=" in summary.stdout
    assert (tmp_path / "a.png").stat().st_size > 1000  # the curves
    assert (tmp_path / "b.png").stat().st_size > 1000  # the heat map


# ------------------------------------------------------------------------------------------
# A seed that diverges does not poison the others
# ------------------------------------------------------------------------------------------


def test_a_diverging_pair_is_reported_and_the_others_are_untouched():
    raw = tiny_config("ER", num_seeds=2, alpha_adam=[1e-3, 3e-3])
    cfg = config.validate_config(raw, definition("ER"))
    points = config.grid_points(cfg)
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = train_ER_DQN.build_agent(cfg, env)
    run = compilation.compile_run(agent, env, cfg, len(points))
    hp = config.grid_hyperparameters(points)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    results = []
    for poison in (False, True):
        state = run.init(keys)
        state, _ = run.chunk(state, jnp.int32(0), jnp.bool_(False), hp)
        if poison:  # point 1, seed 0: its Q parameters become NaN
            q_params = jax.tree.map(lambda x: x.at[1, 0].set(jnp.nan), state.learner.q_params)
            state = state._replace(learner=state.learner._replace(q_params=q_params))
        state, report = run.chunk(state, jnp.int32(50), jnp.bool_(True), hp)
        scores = run.evaluate(state.learner, keys, hp)
        results.append(jax.device_get((state.learner.q_params, report, scores)))
    (clean_params, clean, clean_scores), (params, report, scores) = results
    np.testing.assert_array_equal(report.nonfinite, [[False, False], [True, False]])
    assert not clean.nonfinite.any()
    assert np.isnan(report.diagnostics["q_loss"][1, 0])
    ok = np.array([[True, True], [False, True]])  # every pair but the poisoned one
    np.testing.assert_array_equal(scores[ok], clean_scores[ok])
    for name in clean.diagnostics:
        np.testing.assert_array_equal(report.diagnostics[name][ok], clean.diagnostics[name][ok])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[ok], b[ok]), params, clean_params)


def test_a_config_that_diverges_is_logged_and_recorded(tmp_path):
    raw = tiny_config("ER", num_steps=150, alpha_adam=[1e-3, 1e30], save_params=False)
    config_path = tmp_path / "diverge.json"
    config_path.write_text(json.dumps(raw))
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, SCRIPTS["ER"]), f"--config={config_path}"]
        + [f"--output={tmp_path / 'd'}", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "diverged" in line]
    assert warnings == [
        f"warning: seed {s} of alpha_adam=1e+30 diverged: non-finite Q values or losses in the "
        "chunk before evaluation 1 (t=50); the other seeds go on"
        for s in (0, 1)
    ]
    bad = load_pickle(tmp_path / "d_alpha_adam=1e+30.out")["metrics"]["diverged"]
    good = load_pickle(tmp_path / "d_alpha_adam=0.001.out")["metrics"]["diverged"]
    assert [list(d) for d in bad] == [[False, False], [True, True], [True, True]]
    assert not np.any(good)
    plot = subprocess.run(
        [sys.executable, os.path.join(ROOT, "plot_metric.py"), "--no-show"]
        + [
            "--data",
            str(tmp_path / "d_alpha_adam=1e+30.out"),
            str(tmp_path / "d_alpha_adam=0.001.out"),
        ]
        + ["--save", str(tmp_path / "p.png")],
        capture_output=True,
        text=True,
    )
    assert plot.returncode == 0, plot.stderr
    assert "all 2 seeds diverged" in plot.stderr


def test_loop_runs_a_block_of_pairs_with_their_own_hyperparameters():
    """`over_pairs`: the grid axis outside, the seeds inside; hp has the grid axis only."""
    fn = loop.over_pairs(lambda x, hp: x * hp["scale"], hp_arg=1)
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(
        fn(x, {"scale": jnp.array([1.0, 10.0])}), [[0, 1, 2], [30, 40, 50]]
    )


class RecordingBar:
    """What a tqdm bar is told (a real one draws only on a terminal)."""

    def __init__(self):
        self.postfix, self.lines = None, []

    def set_postfix(self, **postfix):
        self.postfix = postfix

    def write(self, line):
        self.lines.append(line)


def test_the_bar_shows_the_best_points_mean_return():
    points = [{"alpha_adam": 1e-3}, {"alpha_adam": 3e-3}]
    axes = {"alpha_adam": [1e-3, 3e-3]}
    scores = np.array([[-10.0, -12.0], [-4.0, -6.0]], np.float32)
    bar = RecordingBar()
    experiment.show_progress(bar, False, 500, scores, points, axes)
    assert bar.postfix == {"time": 500, "best": "alpha_adam=0.003 -5.000"}
    assert bar.lines == ["t=500 returns (best point alpha_adam=0.003): -4.000 -6.000"]
