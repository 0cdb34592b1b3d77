"""Tests of sweep_summary.py: grid axes, scores, ranking, warnings, pictures, CLI, errors."""

import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never open a window from the test process

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

from helpers import headless_env, run_tool  # noqa: E402

import grids  # noqa: E402
import scoring  # noqa: E402
import sweep_summary  # noqa: E402

ALPHAS = [2.5e-05, 5e-05, 1e-04]
TEMPS = [0.05, 0.1, 0.2]
NUM_SEEDS = 5
NUM_EVALS = 4
# Mean-zero offsets: each seed's mean over evaluations is base + SEED_OFFSETS[s], so a point's
# score (the mean over seeds) is exactly its base.
SEED_OFFSETS = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
EVAL_OFFSETS = np.array([-3.0, -1.0, 1.0, 3.0])


def centre_best(i, j):
    """Known scores of the 3 x 3 grid: -5 at the centre (5e-05, 0.1), -15 and -25 around."""
    return -5.0 - 10.0 * (abs(i - 1) + abs(j - 1))


def write_point(folder, base, diverged=None, environment="ProcMaze", prefix="ER", **axes):
    """Write a grid point's `.out` file as a grid run names it; its returns have mean ``base``."""
    returns = base + SEED_OFFSETS[None, :] + EVAL_OFFSETS[:, None]
    config = types.SimpleNamespace(
        agent_type="ER",
        seed=0,
        num_seeds=NUM_SEEDS,
        environment=environment,
        env_config={"grid_size": 4},
        exploration_strat="softmax",
        gamma=0.9,
        **axes,
    )
    metrics = {
        "reward_rates": [row.astype(np.float32) for row in returns],
        "eval_times": [500 * i for i in range(NUM_EVALS)],
    }
    if diverged is not None:  # seeds diverged from evaluation 2 on, as the training code marks
        flags = np.isin(np.arange(NUM_SEEDS), diverged)
        metrics["diverged"] = [flags & (i >= 2) for i in range(NUM_EVALS)]
    name = "_".join([prefix, *(f"{k}={v!r}" for k, v in axes.items())]) + ".out"
    path = Path(folder) / name
    with open(path, "wb") as f:
        pickle.dump({"config": config, "metrics": metrics}, f)
    return str(path)


def write_grid(folder, score=centre_best, skip=()):
    """The 3 x 3 grid over alpha_adam x softmax_temp; (i, j) in ``skip`` get no file."""
    paths = []
    for i, alpha in enumerate(ALPHAS):
        for j, temp in enumerate(TEMPS):
            if (i, j) not in skip:
                diverged = [0, 3] if (i, j) == (0, 0) else []  # recorded, none diverged
                paths.append(
                    write_point(folder, score(i, j), diverged, alpha_adam=alpha, softmax_temp=temp)
                )
    return paths


def run_script(*args, cwd):
    return run_tool("sweep_summary.py", *args, cwd=cwd)


def assert_png(path, min_bytes=10_000):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes  # a real figure, not an empty canvas


# --- finding the grid -----------------------------------------------------------------------


def test_axes_are_the_numeric_keys_that_differ(tmp_path):
    runs = [scoring.load_run(p) for p in write_grid(tmp_path)]
    assert grids.find_axes(runs) == ["alpha_adam", "softmax_temp"]
    assert grids.axis_values(runs, "alpha_adam") == ALPHAS
    assert grids.axis_values(runs, "softmax_temp") == TEMPS


def test_one_file_is_a_one_point_grid(tmp_path):
    path = write_point(tmp_path, -7.0, alpha_adam=5e-05)
    runs, axes, ranked = grids.summarise([path], "reward_rates", minimize=False)
    assert axes == [] and len(ranked) == 1
    assert ranked[0].score == pytest.approx(-7.0)


def test_files_from_different_environments_are_not_one_grid(tmp_path):
    a = write_point(tmp_path, -5.0, alpha_adam=5e-05)
    b = write_point(tmp_path, -5.0, environment="ButtonGrid", prefix="other", alpha_adam=1e-04)
    runs = [scoring.load_run(p) for p in (a, b)]
    with pytest.raises(grids.GridError, match="'environment' differs"):
        grids.find_axes(runs)
    proc = run_script("--data", a, b, "--no-show", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("sweep_summary.py: error: not one grid: 'environment' differs")
    assert "ProcMaze" in lines[0] and "ButtonGrid" in lines[0]


def test_a_file_from_before_a_key_existed_reads_it_at_its_default(tmp_path):
    new = write_point(tmp_path, -5.0, alpha_adam=5e-05, matmul_precision="default")
    old = write_point(tmp_path, -6.0, prefix="old", alpha_adam=1e-04)  # no matmul_precision
    runs = [scoring.load_run(p) for p in (new, old)]
    assert grids.find_axes(runs) == ["alpha_adam"]
    other = write_point(tmp_path, -7.0, prefix="f32", alpha_adam=2e-04, matmul_precision="float32")
    with pytest.raises(grids.GridError, match="'matmul_precision' differs"):
        grids.find_axes([*runs, scoring.load_run(other)])
    unknown = write_point(tmp_path, -7.0, prefix="odd", alpha_adam=4e-04, odd_key=1)
    with pytest.raises(grids.GridError, match="'odd_key' is in .* but not in"):
        grids.find_axes([*runs, scoring.load_run(unknown)])


def test_the_same_point_twice_is_an_error(tmp_path):
    a = write_point(tmp_path, -5.0, alpha_adam=5e-05)
    b = write_point(tmp_path, -6.0, prefix="copy", alpha_adam=5e-05)
    with pytest.raises(SystemExit) as excinfo:
        sweep_summary.main(["--data", a, b, "--no-show"])
    assert excinfo.value.code == 2


# --- scores and ranking ---------------------------------------------------------------------


def test_score_is_the_mean_over_seeds_of_each_seeds_mean_return(tmp_path):
    path = write_point(tmp_path, -12.0, alpha_adam=5e-05)
    with open(path, "rb") as f:
        returns = np.stack(pickle.load(f)["metrics"]["reward_rates"]).astype(np.float64)
    point = scoring.score_point(scoring.load_run(path), ["alpha_adam"])
    assert point.score == pytest.approx(returns.mean(axis=0).mean())
    assert point.score == pytest.approx(-12.0)
    assert point.low < point.score < point.high  # the seeds differ: a real interval
    again = scoring.score_point(scoring.load_run(path), ["alpha_adam"])
    assert (again.low, again.high) == (point.low, point.high)  # fixed bootstrap seed
    assert point.num_seeds == point.total_seeds == NUM_SEEDS
    assert point.num_diverged is None  # the file does not record divergence


def test_ranking_puts_the_best_point_first(tmp_path):
    runs, axes, ranked = grids.summarise(write_grid(tmp_path), "reward_rates", False)
    assert len(ranked) == 9
    assert ranked[0].coords == (5e-05, 0.1)
    scores = [p.score for p in ranked]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx([-5.0] + [-15.0] * 4 + [-25.0] * 4)
    assert grids.edge_warnings(ranked[0], runs, axes) == []  # best is inside the grid
    lowest_first = scoring.rank(ranked, minimize=True)
    assert lowest_first[-1].coords == (5e-05, 0.1)


def test_diverged_seeds_are_counted_but_stay_in_the_score(tmp_path):
    runs, _, ranked = grids.summarise(write_grid(tmp_path), "reward_rates", False)
    corner = next(p for p in ranked if p.coords == (2.5e-05, 0.05))
    assert corner.num_diverged == 2
    assert corner.num_seeds == NUM_SEEDS and corner.score == pytest.approx(-25.0)
    assert next(p for p in ranked if p.coords == (5e-05, 0.1)).num_diverged == 0


def test_best_at_the_largest_value_warns_to_extend_the_grid(tmp_path):
    paths = write_grid(tmp_path, score=lambda i, j: -5.0 - 10 * (2 - i) - 10 * abs(j - 1))
    runs, axes, ranked = grids.summarise(paths, "reward_rates", False)
    assert ranked[0].coords == (1e-04, 0.1)
    warnings = grids.edge_warnings(ranked[0], runs, axes)
    assert warnings == [
        "warning: best alpha_adam is the largest value tried (0.0001): extend the grid"
    ]


def test_report_lines_table_and_best_line(tmp_path):
    runs, axes, ranked = grids.summarise(write_grid(tmp_path), "reward_rates", False)
    lines = sweep_summary.report_lines(runs, axes, ranked)
    table = lines[0].splitlines()
    assert table[0].split() == [
        "rank",
        "alpha_adam",
        "softmax_temp",
        "score",
        "95%",
        "interval",
        "IQM",
        "95%",
        "interval",
        "P(best",
        "better)",
        "[95%]",
        "seeds",
        "diverged",
    ]
    assert table[1].split()[:4] == ["1", "5e-05", "0.1", "-5.0"]
    # the IQM of seeds -7..-3 is the mean of -6, -5, -4; the best point against itself: no P
    first = table[1].split()
    assert first[6] == "-5.0" and first[9:] == ["(best)", "5", "0"]
    assert float(first[7].strip("[,")) < -5.0 < float(first[8].strip("]"))
    # every seed of the best point (-7..-3) beats every seed of the next (-17..-13)
    assert table[2].split()[-5:-2] == ["1.00", "[1.00,", "1.00]"]
    assert len(table) == 1 + 9
    best = ranked[0]
    assert lines[1] == (
        f"best: alpha_adam=5e-05 softmax_temp=0.1 score -5.0 [{best.low:.1f}, {best.high:.1f}] "
        f"({best.path})"
    )


def test_p_best_better_is_near_one_half_for_points_the_seeds_do_not_separate(tmp_path):
    paths = [
        write_point(tmp_path, -5.0, alpha_adam=1e-4),
        write_point(tmp_path, -5.5, alpha_adam=2e-4),  # seeds -7.5..-3.5 against -7..-3
    ]
    runs, axes, ranked = grids.summarise(paths, "reward_rates", False)
    vs = sweep_summary.against_best(runs, ranked)[ranked[1].path][1]
    pairs = np.add.outer(SEED_OFFSETS, -SEED_OFFSETS) + 0.5  # best seed minus other seed
    assert vs.value == pytest.approx(np.mean(pairs > 0))
    assert 0.5 < vs.value < 0.75 and vs.low < 0.5 < vs.high
    # lower is better: the same two points, the other way round
    runs, axes, ranked = grids.summarise(paths, "reward_rates", True)
    assert ranked[0].path == paths[1]
    assert sweep_summary.against_best(runs, ranked, True)[paths[0]][1] == vs


# --- pictures -------------------------------------------------------------------------------


def test_heat_map_png_is_written(tmp_path):
    png = tmp_path / "heat.png"
    paths = write_grid(tmp_path)
    assert sweep_summary.main(["--data", *paths, "--save", str(png), "--no-show"]) == 0
    assert_png(png)


def test_heat_map_cells_labels_and_best_outline(tmp_path):
    runs, axes, ranked = grids.summarise(write_grid(tmp_path), "reward_rates", False)
    fig = sweep_summary.draw(ranked, runs, axes, ranked[0], "reward_rates")
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2.5e-05", "5e-05", "0.0001"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0.05", "0.1", "0.2"]
        assert ax.get_xlabel() == "alpha_adam" and ax.get_ylabel() == "softmax_temp"
        assert "ER" in ax.get_title() and "ProcMaze" in ax.get_title()
        texts = {(t.get_position()): t.get_text() for t in ax.texts}
        assert len(texts) == 9
        assert texts[(1, 1)] == "-5.0"  # x = alpha index 1, y = temp index 1
        assert texts[(0, 0)] == "-25.0\n2 diverged"
        outlines = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
        assert len(outlines) == 1 and outlines[0].get_xy() == (0.5, 0.5)
        assert "reward_rates" in fig.axes[1].get_ylabel()  # the colour bar
    finally:
        plt.close(fig)


def test_missing_grid_point_leaves_a_blank_cell(tmp_path):
    paths = write_grid(tmp_path, skip={(2, 0)})
    runs, axes, ranked = grids.summarise(paths, "reward_rates", False)
    lines = sweep_summary.report_lines(runs, axes, ranked)
    assert lines[-1].startswith("note: 1 grid point has no file")
    assert "alpha_adam=0.0001 softmax_temp=0.05" in lines[-1]
    fig = sweep_summary.draw(ranked, runs, axes, ranked[0], "reward_rates")
    try:
        ax = fig.axes[0]
        assert len(ax.texts) == 8
        cells = ax.images[0].get_array()
        assert cells.mask[0, 2] and cells.mask.sum() == 1  # y = 0.05, x = 0.0001: blank
    finally:
        plt.close(fig)
    png = tmp_path / "gap.png"
    assert sweep_summary.main(["--data", *paths, "--save", str(png), "--no-show"]) == 0
    assert_png(png)


def test_one_axis_draws_score_against_a_log_axis(tmp_path):
    alphas = [1e-05, 1e-04, 1e-03]
    paths = [
        write_point(tmp_path, base, alpha_adam=a)
        for a, base in zip(alphas, [-20.0, -8.0, -14.0], strict=True)
    ]
    runs, axes, ranked = grids.summarise(paths, "reward_rates", False)
    assert axes == ["alpha_adam"]
    fig = sweep_summary.draw(ranked, runs, axes, ranked[0], "reward_rates")
    try:
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"  # positive values spanning 100x
        np.testing.assert_allclose(ax.lines[0].get_xdata(), alphas)
        np.testing.assert_allclose(ax.lines[0].get_ydata(), [-20.0, -8.0, -14.0], rtol=1e-6)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-05", "0.0001", "0.001"]
    finally:
        plt.close(fig)
    png = tmp_path / "line.png"
    assert sweep_summary.main(["--data", *paths, "-o", str(png), "--no-show"]) == 0
    assert_png(png)


def test_three_axes_draw_no_picture(tmp_path, capsys):
    paths = [
        write_point(tmp_path, -float(a + b + c), a_=a, b_=b, c_=c)
        for a in (1, 2)
        for b in (1, 2)
        for c in (1, 2)
    ]
    assert sweep_summary.main(["--data", *paths, "--no-show"]) == 0
    out = capsys.readouterr().out
    assert "no picture for 3 axes (a_, b_, c_)" in out
    assert not list(tmp_path.glob("*.png"))


def test_default_save_path_is_the_common_prefix():
    paths = [
        "runs/ER_alpha_adam=5e-05_softmax_temp=0.1.out",
        "runs/ER_alpha_adam=5e-04_softmax_temp=0.2.out",
    ]
    keys = ["agent_type", "alpha_adam", "softmax_temp"]
    assert sweep_summary.default_save_path(paths, keys) == os.path.join("runs", "ER_summary.png")
    assert sweep_summary.default_save_path(["ER.out"]) == "ER_summary.png"


# --- as a user runs it ----------------------------------------------------------------------


def test_script_prints_the_ranking_and_saves_the_heat_map(tmp_path):
    names = [Path(p).name for p in write_grid(tmp_path)]
    proc = run_script("--data", *names, "--no-show", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "alpha_adam", "softmax_temp"]
    assert lines[10].startswith("best: alpha_adam=5e-05 softmax_temp=0.1 score -5.0 [")
    assert lines[10].endswith("(ER_alpha_adam=5e-05_softmax_temp=0.1.out)")
    assert lines[-1] == "saved ER_summary.png"
    assert_png(tmp_path / "ER_summary.png")
    assert proc.stderr == ""


def test_script_imports_no_jax(tmp_path):
    paths = write_grid(tmp_path)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import sweep_summary;"
        "sweep_summary.main(['--no-show', '-o', sys.argv[2], '-d', *sys.argv[3:]]);"
        "print([m for m in sys.modules if m == 'jax' or m.startswith('jax.')])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(tmp_path / "h.png"), *paths],
        env=headless_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_missing_metric_and_file_exit_2(tmp_path, capsys):
    path = write_point(tmp_path, -5.0, alpha_adam=5e-05)
    with pytest.raises(SystemExit) as excinfo:
        sweep_summary.main(["--data", path, "--metric", "q_loss", "--no-show"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no metric 'q_loss'; it has: reward_rates" in err[0]
    with pytest.raises(SystemExit) as excinfo:
        sweep_summary.main(["--data", str(tmp_path / "nope.out"), "--no-show"])
    assert excinfo.value.code == 2


def test_tick_labels_are_as_given_unless_too_long():
    assert sweep_summary.tick_labels([2.5e-05, 5e-05, 1e-04, 64]) == [
        "2.5e-05",
        "5e-05",
        "0.0001",
        "64",
    ]
    powers = [2.0**-16, 2.0**-13]  # 1.52587890625e-05, 0.0001220703125
    assert sweep_summary.tick_labels(powers) == ["1.526e-05", "0.0001221"]
    close = [1.0000001e-05, 1.0000002e-05]  # shortening would merge them: keep them exact
    assert sweep_summary.tick_labels(close) == [repr(v) for v in close]


def test_keys_only_the_host_loop_reads_are_never_axes_and_are_named(tmp_path, capsys):
    """Runs of different lengths and checkpoint intervals: the axis is the step size alone, and a
    note names the host-only keys that differ (not advice to extend the grid along them)."""
    paths = [
        write_point(tmp_path, -5.0, alpha_adam=1e-4, num_steps=1000, checkpoint_frequency=100),
        write_point(tmp_path, -9.0, alpha_adam=5e-5, num_steps=2000, checkpoint_frequency=200),
    ]
    runs, axes, ranked = grids.summarise(paths, "reward_rates", minimize=False)
    assert axes == ["alpha_adam"]
    lines = sweep_summary.report_lines(runs, axes, ranked)
    assert (
        "note: the runs differ in checkpoint_frequency (100, 200), which is not a grid axis"
        in lines
    )
    assert "note: the runs differ in num_steps (1000, 2000), which is not a grid axis" in lines
    assert not any("checkpoint_frequency is the" in line for line in lines)
    # The Figure 4 driver hands over the axes its tune job built: nothing is worked out again.
    assert grids.summarise(paths, "reward_rates", False, axes=["alpha_adam"])[1] == axes
