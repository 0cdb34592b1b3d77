"""The Figure 4 layout: one row per data regime, one column per environment, one line per agent
(its final runs' mean over seeds with a 95% bootstrap band, diverged seeds left out), drawn with
the curves `plot_metric.py` draws (`curves.py`); and what the figure shows in numbers: each
panel's agents ranked by the area under their curves, and which of them differ beyond their
intervals (`ranking_lines`); and each model-based agent against ER with the statistics of
Agarwal et al. (2021) (`write_comparison`: probability of improvement, mean and IQM of
normalised areas, per panel and over all panels, as a Markdown and a CSV table beside the
figure, with a performance profile).

The figures are bare `matplotlib.figure.Figure`s, never pyplot's: they are only saved, so no
backend is chosen, and nothing here changes matplotlib's state when it is imported."""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import curves
import scoring
from agent_registry import AGENTS
from figure4.plan import ENVIRONMENTS, METRIC, Cell
from training.files import save_png_atomic, write_atomic
from training.results import ResultsError

BASELINE = "ER"  # the paper's claim: a learned model's generalization beats experience replay
PROFILE_POINTS = 101  # thresholds of the performance profile


COLOURS = {agent: f"C{i}" for i, agent in enumerate(AGENTS)}  # the same in every picture


def y_label(env: str) -> str:
    return "return" if ENVIRONMENTS[env].episodic else "return (average reward per step)"


def auto_window(window: int | None):
    """The smoothing width as a function of a run's evaluations: `window`, by default 1/50 of
    them (2000 evaluations are noisy point by point)."""
    return lambda evaluations: max(1, min(evaluations, window or evaluations // 50))


def panel_outputs(folder: str, agents, env: str, regime: str) -> dict[str, str]:
    """agent -> the path of its final `.out` in the panel, for each agent that has one."""
    paths = {
        agent: os.path.join(folder, f"{Cell(agent, env, regime).name}.out") for agent in agents
    }
    return {agent: path for agent, path in paths.items() if os.path.exists(path)}


def panel_curves(folder: str, agents: list[str], env: str, regime: str, window):
    """agent -> its curve (`curves.file_curve`), for each agent with a readable output."""
    found = {}
    for agent, path in panel_outputs(folder, agents, env, regime).items():
        try:
            summary, notes = curves.file_curve(path, METRIC, auto_window(window))
        except ResultsError as error:
            print(f"plot: {error}; drawn as absent", file=sys.stderr)
            continue
        for note in notes:
            print(f"plot: {note}", file=sys.stderr)
        if summary is not None:
            found[agent] = summary
    return found


def draw_figure(folder: str, agents, envs, regimes, window=None):
    """One row per regime, one column per environment, one line per agent whose final output
    exists; a panel without any says so. Returns the matplotlib figure."""
    width = max(4.6 * len(envs), 8.0)  # room for the legend under a single panel too
    fig = Figure(figsize=(width, 3.6 * len(regimes)))
    axes = fig.subplots(len(regimes), len(envs), squeeze=False)
    drawn = set()
    for row, regime in enumerate(regimes):
        for col, env in enumerate(envs):
            ax = axes[row][col]
            panel = panel_curves(folder, agents, env, regime, window)
            for agent, summary in panel.items():
                curves.draw_curve(ax, summary, agent, COLOURS[agent]).set_linewidth(1.2)
            if not panel:
                ax.text(
                    0.5, 0.5, "no runs yet", ha="center", va="center", color="grey",
                    transform=ax.transAxes,
                )  # fmt: skip
            drawn |= set(panel)
            ax.set_title(f"{env}, {regime} data")
            ax.set_xlabel("environment steps")
            ax.set_ylabel(y_label(env))
            ax.grid(True, alpha=0.3)
    shown = [agent for agent in AGENTS if agent in drawn]
    handles = [Line2D([], [], color=COLOURS[agent], linewidth=2) for agent in shown]
    columns = min(len(shown), int(width // 2.6)) or 1  # about 2.6 inches a label
    rows = -(-len(shown) // columns)
    if handles:
        labels = [AGENTS[a].label for a in shown]
        fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False)
    legend_height = 0.3 * rows / fig.get_figheight()  # inches per row of labels
    fig.tight_layout(rect=(0, legend_height + 0.01 if handles else 0, 1, 1))
    return fig


def save_figure(path: str, folder: str, agents, envs, regimes, window=None) -> int:
    """Draw the figure from the final runs in `folder` and save it; returns the curves drawn."""
    fig = draw_figure(folder, agents, envs, regimes, window)
    lines = sum(len(ax.get_lines()) for ax in fig.axes)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_png_atomic(path, fig, dpi=110)
    return lines


class AgentScore(NamedTuple):
    """An agent's area under the curve in one panel."""

    agent: str
    score: float  # the return averaged over the run's evaluations, then over seeds
    low: float  # 95% bootstrap interval over seeds
    high: float
    seeds: int


def panel_runs(folder: str, agents, env: str, regime: str) -> dict[str, scoring.Run]:
    """agent -> its final run in the panel scored per seed (`scoring.load_run`), for each agent
    with a readable output (an unreadable one was reported by the figure already)."""
    runs = {}
    for agent, path in panel_outputs(folder, agents, env, regime).items():
        try:
            runs[agent] = scoring.load_run(path, METRIC)
        except ResultsError:
            continue
    return runs


def panel_scores(folder: str, agents, env: str, regime: str) -> list[AgentScore]:
    """The panel's agents with a readable output, best first, scored as `sweep_summary` scores
    a grid point (diverged seeds stay in: their returns are what the agent achieved)."""
    scores = []
    for agent, run in panel_runs(folder, agents, env, regime).items():
        point = scoring.score_point(run, [])
        if np.isfinite(point.score):
            scores.append(AgentScore(agent, point.score, point.low, point.high, point.num_seeds))
    return sorted(scores, key=lambda s: -s.score)


def ranking_lines(folder: str, agents, envs, regimes) -> list[str]:
    """Per panel: the agents ranked by area under the curve with their intervals, and the pairs
    of agents whose intervals do not overlap."""
    lines = []
    for regime in regimes:
        for env in envs:
            scores = panel_scores(folder, agents, env, regime)
            if not scores:
                continue
            fmt = scoring.number_format(scores).format
            lines.append(
                f"{env}, {regime} data: area under the curve (return averaged over evaluations "
                "and seeds; 95% bootstrap interval over seeds), best first:"
            )
            for rank, s in enumerate(scores, start=1):
                lines.append(
                    f"  {rank}. {AGENTS[s.agent].label}: {fmt(s.score)} "
                    f"[{fmt(s.low)}, {fmt(s.high)}] over {s.seeds} seeds"
                )
            apart = [
                f"{AGENTS[a.agent].label} > {AGENTS[b.agent].label}"
                for i, a in enumerate(scores)
                for b in scores[i + 1 :]
                if a.low > b.high
            ]
            lines.append(
                "  beyond their intervals: " + ("; ".join(apart) or "no two agents differ")
            )
    return lines


# --------------------------------------------------------------------------------------------
# Each model-based agent against ER (Agarwal et al., 2021)
# --------------------------------------------------------------------------------------------


def panel_name(env: str, regime: str) -> str:
    return f"{env}, {regime} data"


def panel_areas(folder: str, agents, envs, regimes) -> dict[str, dict[str, np.ndarray]]:
    """panel -> agent -> each seed's area under the curve (finite ones), for the panels with
    at least one run, in the figure's order (row by row)."""
    panels = {}
    for regime in regimes:
        for env in envs:
            runs = panel_runs(folder, agents, env, regime)
            areas = {a: run.finite_scores for a, run in runs.items() if run.finite_scores.size}
            if areas:
                panels[panel_name(env, regime)] = areas
    return panels


COMPARISON_NOTE = (
    "Each seed's area under the curve (its return averaged over the run's evaluations), "
    "normalised per panel from the panel's worst agent's mean area (0) to its best's (1); "
    "'area' is the mean over seeds before normalising. Mean and interquartile mean (IQM) of "
    "the normalised areas, and P(agent > ER): the probability that a seed of the agent has a "
    "larger area than a seed of ER (ties count one half), each with a 95% stratified bootstrap "
    "interval over seeds (Agarwal et al., 2021; scipy.stats). 'all panels' aggregates the "
    "panels an agent has, each panel one stratum."
)


def comparison_paths(figure_path: str) -> tuple[str, str, str]:
    """The Markdown table, the CSV table and the performance profile, beside the figure (its
    name, less `.png`, then `_comparison` with the suffixes md and csv, and `_profile.png`)."""
    stem = os.path.splitext(figure_path)[0]
    return (*(f"{stem}_comparison.{suffix}" for suffix in ("md", "csv")), f"{stem}_profile.png")


def write_comparison(figure_path: str, folder: str, agents, envs, regimes) -> list[str]:
    """Compare every agent with ER in each panel and over all panels (`scoring.compare`); write
    the table as Markdown and CSV and the performance profile beside the figure; return the
    lines to print (nothing when no panel has a run)."""
    panels = panel_areas(folder, agents, envs, regimes)
    if not panels:
        return []
    rows = scoring.compare(panels, BASELINE)
    table = scoring.markdown_table(rows, BASELINE, label=lambda a: AGENTS[a].label)
    markdown, csv, profile = comparison_paths(figure_path)
    write_atomic(markdown, lambda f: f.write(f"{COMPARISON_NOTE}\n\n{table}\n".encode()))
    write_atomic(csv, lambda f: f.write(scoring.csv_text(rows).encode()))
    save_png_atomic(profile, draw_profile(panels), dpi=110)
    return [
        "Each agent against ER: " + COMPARISON_NOTE,
        table,
        f"plot: the table -> {markdown} and {csv}; the performance profile -> {profile}",
    ]


def draw_profile(panels: dict[str, dict[str, np.ndarray]]) -> Figure:
    """Performance profiles over all panels: for each agent, the fraction of its runs whose
    normalised area exceeds each threshold, with a 95% stratified bootstrap band."""
    normalised = [scoring.normalise(areas) for areas in panels.values()]
    every = np.concatenate([a for n in normalised for a in n.values()])
    every = every[np.isfinite(every)]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    if every.size:
        taus = np.linspace(min(every.min(), 0.0), max(every.max(), 1.0), PROFILE_POINTS)
        for agent in (a for a in AGENTS if any(a in n for n in normalised)):
            own = [n[agent] for n in normalised if agent in n and np.isfinite(n[agent]).all()]
            if not own:
                continue
            fraction, low, high = scoring.performance_profile(own, taus)
            ax.plot(taus, fraction, color=COLOURS[agent], label=AGENTS[agent].label)
            ax.fill_between(taus, low, high, color=COLOURS[agent], alpha=0.2, linewidth=0)
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("normalised area under the curve τ (0: a panel's worst agent, 1: its best)")
    ax.set_ylabel("fraction of runs with area > τ")
    ax.set_title(f"Performance profile over {len(panels)} panel{'s' * (len(panels) > 1)}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
