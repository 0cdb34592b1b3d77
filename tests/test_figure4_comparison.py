"""The Figure 4 plot stage's comparison with ER (`figure4.figure.write_comparison`): the table
printed and written as Markdown and CSV beside the figure, and the performance profile, from
small synthetic `.out` files and from the --quick pipeline's outputs."""

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import write_fake_out

import reproduce_figure4 as r4
from figure4 import figure

NUM_EVALUATIONS = 5
# Each seed's return is the same at every evaluation, so its area under the curve is that value.
AREAS = {
    ("ER", "PanFlute"): [0.10, 0.11, 0.12, 0.13],
    ("perfect_model", "PanFlute"): [0.20, 0.21, 0.22, 0.23],  # above ER in every seed
    ("simple_model", "PanFlute"): [0.105, 0.115, 0.125, 0.135],  # ER's seeds + 0.005
    ("ER", "ProcMaze"): [-10.0, -9.0, -8.0],
    ("perfect_model", "ProcMaze"): [-5.0, -4.0, -3.0],
}


def write_final_runs(out_dir, envs=("PanFlute", "ProcMaze")):
    final = out_dir / "final"
    final.mkdir(parents=True)
    for (agent, env), areas in AREAS.items():
        if env not in envs:
            continue
        values = np.tile(np.array(areas), (NUM_EVALUATIONS, 1))
        write_fake_out(final / f"{agent}_{env}_high.out", values, agent_type=agent)
    return final


def read_csv(path):
    with open(path, newline="") as f:
        return {(row["panel"], row["agent"]): row for row in csv.DictReader(f)}


def test_plot_prints_and_writes_each_agent_against_er(tmp_path, capsys):
    write_final_runs(tmp_path)
    assert r4.main(["--stage", "plot", "--out-dir", str(tmp_path), "--regimes", "high"]) == 0
    out = capsys.readouterr().out
    markdown, table, profile = figure.comparison_paths(str(tmp_path / "figure4.png"))
    text = Path(markdown).read_text()
    assert Path(markdown).parent == tmp_path and Path(table).parent == tmp_path
    assert text.split("\n\n")[1].strip() in out  # the table printed is the table written
    assert "| panel | agent | seeds | area |" in out and "| P(agent > ER) [95% CI] |" in out
    rows = read_csv(table)
    assert len(rows) == 5 + 3  # the panels' rows, then ER, perfect and simple over all panels
    simple = rows["PanFlute, high data", "simple_model"]
    assert float(simple["p_improvement"]) == pytest.approx(10 / 16)  # pairs where i >= j
    assert float(simple["p_low"]) < 10 / 16 < float(simple["p_high"])
    perfect = rows["all panels", "perfect_model"]
    assert (perfect["panels"], perfect["seeds"]) == ("2", "7")
    assert [float(perfect[k]) for k in ("p_improvement", "p_low", "p_high")] == [1.0, 1.0, 1.0]
    assert float(perfect["mean"]) == pytest.approx(1.0)  # the best agent of both panels
    assert float(rows["ProcMaze, high data", "ER"]["mean"]) == pytest.approx(0.0)
    assert float(rows["PanFlute, high data", "ER"]["area"]) == pytest.approx(0.115)
    assert rows["PanFlute, high data", "ER"]["p_improvement"] == ""
    assert "| PanFlute, high data | simple model | 4 | 0.120 | " in text
    assert Path(profile).read_bytes()[:4] == b"\x89PNG"


def test_the_laptop_plot_stage_compares_an_existing_run(tmp_path, capsys):
    """`--laptop --stage plot` on a finished laptop --out-dir (PanFlute, high data only): its
    one panel, no aggregate."""
    write_final_runs(tmp_path, envs=("PanFlute",))
    assert r4.main(["--laptop", "--stage", "plot", "--out-dir", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "figure4_comparison.csv")
    assert set(rows) == {
        ("PanFlute, high data", a) for a in ("ER", "perfect_model", "simple_model")
    }
    assert "P(agent > ER)" in capsys.readouterr().out


def test_a_folder_without_runs_writes_no_table(tmp_path):
    assert (
        figure.write_comparison(
            str(tmp_path / "f.png"), str(tmp_path), ["ER"], ["PanFlute"], ["high"]
        )
        == []
    )
    assert not any(Path(p).exists() for p in figure.comparison_paths(str(tmp_path / "f.png")))


def test_the_quick_pipeline_writes_the_comparison(quick_pipeline):
    out, process = quick_pipeline
    rows = read_csv(out / "figure4_comparison.csv")
    assert set(rows) == {
        ("ProcMaze, high data", "ER"),
        ("ProcMaze, low data", "ER"),
        ("all panels", "ER"),
    }
    assert rows["all panels", "ER"]["seeds"] == "4"  # 2 seeds in each of the 2 panels
    assert "| ProcMaze, high data | ER | 2 |" in process.stdout
    assert (out / "figure4_profile.png").read_bytes()[:4] == b"\x89PNG"
