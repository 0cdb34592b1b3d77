"""Tests of plot_metric.py: smoothing, subsampling, bootstrap band, CLI, headless use, errors."""

import pickle
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.figure

matplotlib.use("Agg")  # never open a window from the test process

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

from helpers import fake_values, headless_env, run_tool  # noqa: E402
from helpers import write_fake_out as write_out  # noqa: E402

import curves  # noqa: E402
import plot_metric  # noqa: E402


def run_script(*args, cwd):
    return run_tool("plot_metric.py", *args, cwd=cwd)


# --- loading and plotting -------------------------------------------------------------------


def test_plot_lines_are_the_mean_of_the_smoothed_values(tmp_path):
    v1, v2 = fake_values(12, 5, seed=5), fake_values(12, 3, seed=6) + 20
    f1 = write_out(tmp_path / "ER.out", v1)
    f2 = write_out(tmp_path / "perfect_model.out", v2)
    ax = plot_metric.plot([f1, f2], "reward_rates", window=3, frequency=2)
    try:
        assert len(ax.lines) == 2
        for line, v in zip(ax.lines, (v1, v2), strict=True):
            kept = v.astype(np.float32).astype(np.float64)[::2]  # evaluations 0, 2, ..., 10
            expected = np.stack(
                [np.convolve(kept[:, s], np.ones(3) / 3, "valid") for s in range(kept.shape[1])],
                axis=1,
            ).mean(axis=1)
            expected_t = np.convolve(500.0 * np.arange(12)[::2], np.ones(3) / 3, "valid")
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-10)
            np.testing.assert_allclose(line.get_xdata(), expected_t)
            assert len(expected) == 6 - 3 + 1
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [f1[: -len(".out")], f2[: -len(".out")]]
        assert ax.get_xlabel() == "time" and ax.get_ylabel() == "reward_rates"
        assert len(ax.collections) == 2  # one confidence band per file
        assert ax.xaxis.get_gridlines()[0].get_visible()
    finally:
        plt.close(ax.figure)


def test_main_saves_a_png(tmp_path):
    f1 = write_out(tmp_path / "ER.out", fake_values(10, 4, seed=7))
    f2 = write_out(tmp_path / "simple_model.out", fake_values(10, 4, seed=8))
    png = tmp_path / "curves.png"
    assert plot_metric.main(["--data", f1, f2, "-w", "2", "-f", "1", "--save", str(png)]) == 0
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_png_that_cannot_be_saved_is_one_line_and_the_old_one_stays(
    tmp_path, capsys, monkeypatch
):
    f = write_out(tmp_path / "ER.out", fake_values(10, 4, seed=7))
    png = tmp_path / "curves.png"
    png.write_bytes(b"the old picture")

    def cut_short(fig, target, **kwargs):  # a save that fails half-way (a full disk, say)
        target.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_short)
    with pytest.raises(SystemExit) as exit_info:
        plot_metric.main(["--data", f, "--save", str(png), "--no-show"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(f"cannot save {png}: No space left on device")
    assert png.read_bytes() == b"the old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ER.out", "curves.png"]  # no temp file


def test_main_plots_another_metric(tmp_path):
    f = write_out(tmp_path / "run.out", fake_values(5, 2, seed=9), metric="losses")
    png = tmp_path / "losses.png"
    assert plot_metric.main(["-d", f, "-m", "losses", "-o", str(png), "--title", "t"]) == 0
    assert png.stat().st_size > 0


# --- diagnostics and diverged seeds --------------------------------------------------------


def diverging_run(num_evals=10, num_seeds=6, bad_seeds=(1, 4), from_eval=6, seed=20):
    """Returns, a q_loss that blows up (NaN) in ``bad_seeds``, and the matching 'diverged'."""
    returns = fake_values(num_evals, num_seeds, seed)
    q_loss = np.abs(fake_values(num_evals, num_seeds, seed + 1)) / 100
    diverged = np.zeros((num_evals, num_seeds), dtype=bool)
    for s in bad_seeds:
        returns[from_eval:, s] = -1000.0  # a diverged agent's return drags the mean down
        q_loss[from_eval:, s] = np.nan
        diverged[from_eval:, s] = True  # once True it stays True
    return returns, q_loss, diverged


def test_diverged_seeds_are_left_out_of_the_line_and_the_band(tmp_path):
    returns, q_loss, diverged = diverging_run()
    f = write_out(tmp_path / "ER.out", returns, extra={"q_loss": q_loss}, diverged=diverged)
    notes = []
    for metric in ("reward_rates", "q_loss"):
        ax = plot_metric.plot([f], metric, window=2, warn=notes.append)
        try:
            values = {"reward_rates": returns, "q_loss": q_loss}[metric]
            healthy = values.astype(np.float32).astype(np.float64)[:, [0, 2, 3, 5]]
            _, mean, low, high = curves.curve(500.0 * np.arange(10), healthy, window=2)
            np.testing.assert_allclose(ax.lines[0].get_ydata(), mean, rtol=1e-10)
            band = ax.collections[0].get_paths()[0].vertices[:, 1]
            assert np.all(np.isfinite(band))  # no NaN from the diverged seeds' q_loss
            assert band.min() == pytest.approx(low.min()) and band.max() == pytest.approx(
                high.max()
            )
            assert band.min() > -500  # the -1000 returns of the diverged seeds are not in it
        finally:
            plt.close(ax.figure)
    assert notes == [f"{f}: left out 2 of 6 seeds that diverged (seeds 1, 4)"] * 2


def test_diverged_message_on_stderr_from_the_script(tmp_path):
    returns, _, diverged = diverging_run(bad_seeds=(3,))
    f = write_out(tmp_path / "ER.out", returns, diverged=diverged)
    proc = run_script("--data", "ER.out", "--save", "p.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "ER.out: left out 1 of 6 seeds that diverged (seeds 3)\n"
    assert Path(f).exists() and (tmp_path / "p.png").stat().st_size > 1000


def test_a_file_whose_seeds_all_diverged_draws_no_line(tmp_path):
    returns, q_loss, diverged = diverging_run(num_seeds=3, bad_seeds=(0, 1, 2))
    bad = write_out(tmp_path / "bad.out", returns, extra={"q_loss": q_loss}, diverged=diverged)
    good = write_out(tmp_path / "good.out", fake_values(10, 3, seed=21), extra={"q_loss": q_loss})
    notes = []
    ax = plot_metric.plot([bad, good], "q_loss", warn=notes.append)
    try:
        assert [line.get_label() for line in ax.lines] == [good[: -len(".out")]]
    finally:
        plt.close(ax.figure)
    assert notes[0] == f"{bad}: all 3 seeds diverged; no line drawn"
    # alone, it still saves a (blank) figure and exits 0 instead of crashing
    png = tmp_path / "bad.png"
    assert plot_metric.main(["-d", bad, "-m", "q_loss", "-o", str(png), "--no-show"]) == 0
    assert png.stat().st_size > 0


def test_nan_in_seeds_not_marked_diverged_leaves_gaps_not_a_crash(tmp_path, capsys):
    values = fake_values(8, 3, seed=22)
    loss = np.abs(values) / 10
    loss[3, 1], loss[5, 2] = np.nan, np.inf  # an older file: no 'diverged' record
    f = write_out(tmp_path / "old.out", values, extra={"q_loss": loss})
    png = tmp_path / "old.png"
    assert plot_metric.main(["-d", f, "-m", "q_loss", "-o", str(png), "--no-show"]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"{f}: 2 of 24 'q_loss' values are NaN or infinite in seeds not marked diverged; "
        "the line has gaps there\n"
    )
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    "metric",
    [
        "q_loss",
        "mean_abs_q",
        "model_loss",
        "model_reward",
        "model_termination",
        "model_obs",
        "model_reconstruction",
        "model_kl_posterior",
        "model_kl_prior",
        "model_posterior_entropy",
    ],
)
def test_main_plots_each_diagnostic_metric(tmp_path, metric):
    values = fake_values(6, 3, seed=23)
    diagnostic = np.abs(values) / 7
    f = write_out(tmp_path / "run.out", values, extra={metric: diagnostic})
    ax = plot_metric.plot([f], metric)
    try:
        np.testing.assert_allclose(
            ax.lines[0].get_ydata(), diagnostic.astype(np.float32).mean(axis=1), rtol=1e-6
        )
        assert ax.get_ylabel() == metric
    finally:
        plt.close(ax.figure)
    png = tmp_path / f"{metric}.png"
    assert plot_metric.main(["-d", f, "-m", metric, "-o", str(png), "--no-show"]) == 0
    assert png.stat().st_size > 1000


def test_metric_diverged_plots_the_fraction_of_seeds_diverged(tmp_path):
    returns, _, diverged = diverging_run()
    f = write_out(tmp_path / "ER.out", returns, diverged=diverged)
    notes = []
    ax = plot_metric.plot([f], "diverged", warn=notes.append)
    try:
        np.testing.assert_allclose(ax.lines[0].get_ydata(), diverged.mean(axis=1))
    finally:
        plt.close(ax.figure)
    assert notes == []  # every seed is the data here, none left out


# --- headless subprocess and no jax ---------------------------------------------------------


def test_script_runs_headless_and_imports_no_jax(tmp_path):
    f = write_out(tmp_path / "ER.out", fake_values(8, 3, seed=10))
    png = tmp_path / "out.png"
    proc = run_script("--data", f, "--window", "2", "--save", str(png), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert png.exists() and png.stat().st_size > 0
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import plot_metric, matplotlib;"
        "plot_metric.main(['-d', sys.argv[2], '--save', sys.argv[3]]);"
        "bad = [m for m in sys.modules if m == 'jax' or m.startswith('jax.')];"
        "print(matplotlib.get_backend().lower(), bad)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO), f, str(tmp_path / "b.png")],
        cwd=tmp_path,
        env=headless_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "agg []"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="display detection is Linux's")
def test_display_detection_on_linux(monkeypatch):
    for key in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(key, raising=False)
    assert not curves._has_display()
    assert not curves.can_show()  # never tries to open a window without a display
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert curves._has_display()
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setenv("DISPLAY", ":0")
    assert curves._has_display()
    assert not curves.can_show()  # the test process uses Agg: nothing to show


# --- errors: exit status 2, one line, no traceback ------------------------------------------


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("plot_metric.py: error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_error_missing_file(tmp_path):
    proc = run_script("--data", "nope.out", cwd=tmp_path)
    assert_one_line_error(proc, "file not found", "nope.out")


def test_error_missing_metric_names_the_file_and_its_metrics(tmp_path):
    f = write_out(tmp_path / "ER.out", fake_values(5, 2, seed=11))
    proc = run_script("--data", f, "--metric", "losses", cwd=tmp_path)
    assert_one_line_error(proc, f"{f} has no metric 'losses'", "it has: reward_rates")
    # an older run lacks the diagnostics a newer one has: the error names the old file
    new = write_out(
        tmp_path / "new.out", fake_values(5, 2, seed=12), extra={"q_loss": np.ones((5, 2))}
    )
    proc = run_script("--data", new, f, "--metric", "q_loss", cwd=tmp_path)
    assert_one_line_error(proc, f"{f} has no metric 'q_loss'")


def test_error_window_larger_than_points(tmp_path):
    f = write_out(tmp_path / "ER.out", fake_values(5, 2, seed=12))
    proc = run_script("--data", f, "--window", "6", cwd=tmp_path)
    assert_one_line_error(proc, "window 6 is larger than the number of points 5")
    # after subsampling only 3 of the 5 evaluations remain
    proc = run_script("--data", f, "--window", "4", "--frequency", "2", cwd=tmp_path)
    assert_one_line_error(proc, "window 4 is larger than the number of points 3")


def test_error_invalid_pickle_and_bad_arguments(tmp_path):
    junk = tmp_path / "junk.out"
    junk.write_bytes(b"this is not a pickle")
    assert_one_line_error(run_script("-d", str(junk), cwd=tmp_path), "not a valid .out")
    not_dict = tmp_path / "list.out"
    not_dict.write_bytes(pickle.dumps([1, 2, 3]))
    assert_one_line_error(run_script("-d", str(not_dict), cwd=tmp_path), "not a valid .out")
    f = write_out(tmp_path / "ER.out", fake_values(5, 2, seed=13))
    assert_one_line_error(run_script("-d", f, "-w", "0", cwd=tmp_path), "window must be >= 1")
    assert_one_line_error(run_script("-d", f, "-f", "0", cwd=tmp_path), "frequency must be >= 1")


def test_main_error_in_process_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        plot_metric.main(["--data", str(tmp_path / "missing.out")])
    assert excinfo.value.code == 2
    assert "file not found" in capsys.readouterr().err
