"""The Figure 4 layout: one row per data regime, one column per environment, one line per agent
(its final runs' mean over seeds with a 95% bootstrap band, diverged seeds left out), drawn with
`plot_metric.py`'s own curves; and what the figure shows in numbers (`ranking_lines`): each
panel's agents ranked by the area under their curves, and which of them differ beyond their
intervals."""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

import plot_metric
import sweep_summary
from agent_registry import AGENTS
from figure4.plan import ENVIRONMENTS, METRIC, Cell
from training.files import save_png_atomic
from training.results import ResultsError


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
    """agent -> its curve (`plot_metric.file_curve`), for each agent with a readable output."""
    curves = {}
    for agent, path in panel_outputs(folder, agents, env, regime).items():
        try:
            summary, notes = plot_metric.file_curve(path, METRIC, auto_window(window))
        except ResultsError as error:
            print(f"plot: {error}; drawn as absent", file=sys.stderr)
            continue
        for note in notes:
            print(f"plot: {note}", file=sys.stderr)
        if summary is not None:
            curves[agent] = summary
    return curves


def draw_figure(folder: str, agents, envs, regimes, window=None):
    """One row per regime, one column per environment, one line per agent whose final output
    exists; a panel without any says so. Returns the matplotlib figure."""
    colours = {agent: f"C{i}" for i, agent in enumerate(AGENTS)}  # the same in every panel
    width = max(4.6 * len(envs), 8.0)  # room for the legend under a single panel too
    fig, axes = plt.subplots(
        len(regimes), len(envs), figsize=(width, 3.6 * len(regimes)), squeeze=False
    )
    drawn = set()
    for row, regime in enumerate(regimes):
        for col, env in enumerate(envs):
            ax = axes[row][col]
            curves = panel_curves(folder, agents, env, regime, window)
            for agent, summary in curves.items():
                plot_metric.draw_curve(ax, summary, agent, colours[agent]).set_linewidth(1.2)
            if not curves:
                ax.text(
                    0.5, 0.5, "no runs yet", ha="center", va="center", color="grey",
                    transform=ax.transAxes,
                )  # fmt: skip
            drawn |= set(curves)
            ax.set_title(f"{env}, {regime} data")
            ax.set_xlabel("environment steps")
            ax.set_ylabel(y_label(env))
            ax.grid(True, alpha=0.3)
    shown = [agent for agent in AGENTS if agent in drawn]
    handles = [Line2D([], [], color=colours[agent], linewidth=2) for agent in shown]
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
    plt.close(fig)
    return lines


class AgentScore(NamedTuple):
    """An agent's area under the curve in one panel."""

    agent: str
    score: float  # the return averaged over the run's evaluations, then over seeds
    low: float  # 95% bootstrap interval over seeds
    high: float
    seeds: int


def panel_scores(folder: str, agents, env: str, regime: str) -> list[AgentScore]:
    """The panel's agents with a readable output, best first, scored as `sweep_summary` scores
    a grid point (diverged seeds stay in: their returns are what the agent achieved)."""
    scores = []
    for agent, path in panel_outputs(folder, agents, env, regime).items():
        try:  # an unreadable file was reported by the figure already
            point = sweep_summary.score_point(sweep_summary.load_run(path, METRIC), [])
        except ResultsError:
            continue
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
            fmt = sweep_summary.number_format(scores).format
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
