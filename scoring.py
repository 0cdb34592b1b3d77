"""Scores of runs and the statistics that compare them: the library under the scripts that read
`.out` files (`plot_metric.py`, `sweep_summary.py`) and the Figure 4 plot (`figure4/figure.py`).

A run's score per seed is the area under its learning curve divided by its length: the metric
averaged over the run's evaluations (`load_run`). From these:
- `bootstrap_ci`: the mean over seeds with its 95% percentile-bootstrap interval, per time point
  (the curves' band) or of the per-seed scores;
- `score_point`, `rank`: a grid point's score and a grid's ranking
  best point lies on the grid's edge (`sweep_summary.py`, the Figure 4 `select` stage);
- `compare`: the statistics of "Deep RL at the edge of the statistical precipice" (Agarwal et
  al., NeurIPS 2021), as its `rliable` library computes them: per panel, the probability of
  improvement P(agent > baseline) over seeds, each agent's mean and interquartile mean (IQM) of
  normalised scores, and the same aggregated over panels, each with a 95% stratified bootstrap
  interval; `performance_profile`, the fraction of runs above each normalised score.

Every interval is `scipy.stats.bootstrap` (the percentile method, rliable's default) with a
fixed RNG seed, so every number printed is the same on every run. Why scipy and not rliable
itself: the README's "The claim in numbers". This module imports numpy, scipy and the `.out`
reader: no jax, no matplotlib.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.stats

from training import results
from training.results import DEFAULT_METRIC, ResultsError

NUM_BOOTSTRAP = 1000  # the curves' band: one interval per evaluation
NUM_COMPARISON_BOOTSTRAP = 10_000  # the comparison table: few intervals, each worth more draws
CONFIDENCE = 95.0
BOOTSTRAP_SEED = 0
IQM_CUT = 0.25  # the interquartile mean leaves out the lowest and highest quarter
BOOTSTRAP_BATCH = 1000  # resamples per vectorized call: memory for seeds x seeds x 1000 pairs


# --------------------------------------------------------------------------------------------
# The interval over seeds of a mean (the curves' band, a grid point's score)
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray,
    num_resamples: int = NUM_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and its percentile-bootstrap confidence interval (seaborn's method in
    the reference): `scipy.stats.bootstrap` with `method='percentile'`.

    ``values`` is ``(T, S)`` (or ``(S,)``); seeds (columns) are resampled with replacement
    ``num_resamples`` times, the same resample for every time point (as seaborn does for a
    unit of observation), and the interval is the central ``confidence``% of the resampled
    means. Returns ``(mean, low, high)``, each of shape ``(T,)`` (or scalars for 1-D input).
    Deviations from the first seed are resampled (then shifted back), so identical seeds give
    exactly the seeds' value as mean and both bounds: zero width; so does a single seed.
    """
    values = np.asarray(values, dtype=np.float64)
    one_d = values.ndim == 1
    values = np.atleast_2d(values) if one_d else values
    reference = values[:, 0]
    deviations = values - reference[:, None]
    mean = reference + deviations.mean(axis=1)
    if values.shape[1] < 2:
        low = high = mean
    else:
        interval = _percentile_interval(deviations, num_resamples, confidence, seed)
        low, high = reference + interval.low, reference + interval.high
    if one_d:
        return mean[0], low[0], high[0]
    return mean, low, high


def _percentile_interval(deviations: np.ndarray, num_resamples, confidence, seed):
    # NaN values (gaps in a curve) give NaN bounds there, which is what the plot should show;
    # scipy also warns about them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        return scipy.stats.bootstrap(
            (deviations,),
            np.mean,
            axis=1,
            n_resamples=num_resamples,
            confidence_level=confidence / 100.0,
            method="percentile",
            rng=np.random.default_rng(seed),
            batch=50,  # resampled means of 50 resamples at a time: memory stays small
        ).confidence_interval


# --------------------------------------------------------------------------------------------
# Runs and grid points
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One `.out` file reduced to what scoring needs."""

    path: str
    config: dict
    seed_scores: np.ndarray  # (S,): each seed's metric averaged over evaluations
    diverged: np.ndarray | None  # (S,) bool, or None when the file has no 'diverged' record
    num_evaluations: int

    @property
    def finite_scores(self) -> np.ndarray:
        """The seeds' scores that can be averaged (NaN or infinite ones left out)."""
        return self.seed_scores[np.isfinite(self.seed_scores)]


@dataclass(frozen=True)
class Point:
    """A scored grid point."""

    path: str
    coords: tuple  # the point's value on each axis, in axis order
    score: float
    low: float
    high: float
    num_seeds: int  # seeds with a finite score: those in the mean
    total_seeds: int
    num_diverged: int | None  # None: the file does not record divergence


def load_run(path: str, metric: str = DEFAULT_METRIC) -> Run:
    """Load one `.out` file: its config as a dict and each seed's mean metric."""
    data = results.load_out(path)
    config = results.out_config(data)
    if not config:
        raise ResultsError(f"{path} has no config (expected a SimpleNamespace under 'config')")
    metrics = data["metrics"]
    _, values = results.metric_values(path, metrics, metric)
    with np.errstate(invalid="ignore"):  # +inf and -inf in one seed: NaN, left out later
        seed_scores = values.mean(axis=0)
    diverged = None
    if results.DIVERGED_KEY in metrics:
        diverged = results.diverged_seeds(path, metrics, values.shape[1])
    return Run(path, config, seed_scores, diverged, values.shape[0])


def score_point(run: Run, axes: list[str]) -> Point:
    """Mean over seeds of the seeds' scores, with the 95% bootstrap interval (`bootstrap_ci`).

    Seeds whose score is NaN or infinite cannot be averaged: they are left out of this mean
    (and counted in ``num_seeds``); diverged seeds with finite returns stay in.
    """
    finite = run.finite_scores
    if finite.size:
        score, low, high = (float(x) for x in bootstrap_ci(finite))
    else:
        score = low = high = float("nan")
    num_diverged = None if run.diverged is None else int(np.count_nonzero(run.diverged))
    return Point(
        path=run.path,
        coords=tuple(run.config[a] for a in axes),
        score=score,
        low=low,
        high=high,
        num_seeds=int(finite.size),
        total_seeds=int(run.seed_scores.size),
        num_diverged=num_diverged,
    )


def rank(points: list[Point], minimize: bool = False) -> list[Point]:
    """Best first; points without a finite score last; ties keep the file order."""
    sign = 1.0 if minimize else -1.0
    return sorted(points, key=lambda p: (not np.isfinite(p.score), sign * np.nan_to_num(p.score)))


def decimals_for(values) -> int:
    """Fixed decimals that give the largest finite value 3 significant digits (-12.3, 0.0123)."""
    finite = [abs(x) for x in values if np.isfinite(x)]
    largest = max(finite, default=0.0)
    if largest == 0.0:
        return 3
    return max(0, 2 - int(np.floor(np.log10(largest))))


def number_format(points) -> str:
    """A format string for the scores and intervals of `points` (anything with `score`, `low`
    and `high`), with `decimals_for` their values."""
    return f"{{:.{decimals_for([x for p in points for x in (p.score, p.low, p.high)])}f}}"


# --------------------------------------------------------------------------------------------
# The statistics of the comparison (rliable's, from scipy.stats)
# --------------------------------------------------------------------------------------------


class Estimate(NamedTuple):
    """A statistic and its 95% bootstrap interval (NaN bounds: too few seeds to resample)."""

    value: float
    low: float
    high: float


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) for a seed of each, ties counting one half: the Mann-Whitney U statistic of x
    over the number of pairs, as rliable's `probability_of_improvement` for one task computes
    it with `scipy.stats.mannwhitneyu` (tested equal). The pairs are counted directly: the
    bootstrap evaluates this 10 000 times, and `mannwhitneyu`'s ranking with ties took 3 to 5
    times the CPU time (5 to 30 seeds)."""
    x, y = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]
    return np.mean(x > y, axis=(-2, -1)) + 0.5 * np.mean(x == y, axis=(-2, -1))


def iqm(x: np.ndarray, axis: int | None = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle half (rliable's `aggregate_iqm`)."""
    return scipy.stats.trim_mean(x, IQM_CUT, axis=axis)


def stratified_interval(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    num_resamples: int = NUM_COMPARISON_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile-bootstrap interval of `statistic(*samples, axis=-1)`, each sample
    resampled on its own (a stratified bootstrap, as rliable's `StratifiedBootstrap`: a panel's
    seeds, or an agent's seeds in a panel, are one stratum). `statistic` may return several
    values (a leading axis). NaN bounds when a sample has fewer than 2 values."""
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    if min(s.size for s in samples) < 2:
        shape = np.shape(statistic(*samples, axis=-1))
        return np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings():  # identical seeds: a zero-width interval, which is right
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        interval = scipy.stats.bootstrap(
            samples,
            statistic,
            n_resamples=num_resamples,
            confidence_level=CONFIDENCE / 100.0,
            method="percentile",
            vectorized=True,
            paired=False,
            axis=-1,
            rng=np.random.default_rng(seed),
            batch=BOOTSTRAP_BATCH,
        ).confidence_interval
    return interval.low, interval.high


def _estimates(samples, statistic, num_resamples: int) -> list[Estimate]:
    values = np.atleast_1d(statistic(*samples, axis=-1))
    bounds = stratified_interval(samples, statistic, num_resamples)
    low, high = (np.atleast_1d(b) for b in bounds)
    return [Estimate(*(float(x) for x in e)) for e in zip(values, low, high, strict=True)]


def _mean_and_iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """[mean, IQM] over strata: the mean of the strata's means (rliable's `aggregate_mean`)
    and the IQM of all their values together (rliable's `aggregate_iqm`)."""
    means = np.mean([np.mean(s, axis=axis) for s in samples], axis=0)
    pooled = np.concatenate(samples, axis=axis)
    return np.stack([means, iqm(pooled, axis=axis)])


def mean_and_iqm(
    samples: Sequence[np.ndarray], num_resamples: int = NUM_COMPARISON_BOOTSTRAP
) -> tuple[Estimate, Estimate]:
    """Mean and IQM with intervals, each sample (a panel's seeds) one stratum."""
    mean, iq = _estimates(samples, _mean_and_iqm, num_resamples)
    return mean, iq


def _mean_improvement(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean over pairs (x1, y1, x2, y2, ...) of P(x_k > y_k) (rliable's aggregate)."""
    pairs = zip(samples[::2], samples[1::2], strict=True)
    return np.mean([probability_of_improvement(x, y, axis=axis) for x, y in pairs], axis=0)


def improvement(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], num_resamples: int = NUM_COMPARISON_BOOTSTRAP
) -> Estimate:
    """P(X > Y) averaged over panels, each a pair (agent's seeds, baseline's seeds), with its
    interval; every agent's seeds in every panel are a stratum."""
    samples = [s for pair in pairs for s in pair]
    (estimate,) = _estimates(samples, _mean_improvement, num_resamples)
    return estimate


def normalisation(areas: dict[str, np.ndarray]) -> tuple[float, float]:
    """The panel's (0, 1) of normalised scores: its worst and its best agent's mean area. NaN
    when every agent has the same mean (nothing to scale by)."""
    means = [float(np.mean(a)) for a in areas.values()]
    low, high = min(means), max(means)
    return (low, high) if high > low else (float("nan"), float("nan"))


def normalise(areas: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    low, high = normalisation(areas)
    return {agent: (np.asarray(a) - low) / (high - low) for agent, a in areas.items()}


class ComparisonRow(NamedTuple):
    """One agent in one panel, or over all panels (`panel` is `AGGREGATE`)."""

    panel: str
    agent: str
    panels: int  # panels counted (1 in a panel's own row)
    seeds: int  # seeds with a finite area, over those panels
    area: float  # the mean over seeds of the area (not normalised; NaN in aggregate rows)
    mean: Estimate  # of the normalised area
    iqm: Estimate
    improvement: Estimate | None  # P(agent > baseline); None for the baseline or without one


AGGREGATE = "all panels"


def compare(panels: dict[str, dict[str, np.ndarray]], baseline: str) -> list[ComparisonRow]:
    """Per panel (name -> agent -> each seed's area, finite), then over all panels, each
    agent's normalised mean and IQM and its probability of improvement over `baseline`.

    Scores are normalised per panel (`normalisation`: 0 the worst agent's mean area, 1 the
    best's), so panels of different scales aggregate; P compares seeds within a panel, so it
    needs no scale. Aggregates count the panels an agent has (for P, those where the baseline
    has a run too; for the mean and IQM, those with a scale), each panel one stratum.
    """
    rows, normalised_by_panel = [], {}
    for name, areas in panels.items():
        normalised = normalise(areas)
        normalised_by_panel[name] = normalised
        for agent, scores in normalised.items():
            mean, iq = mean_and_iqm([scores])
            vs = None
            if agent != baseline and baseline in areas:  # P is the same on either scale
                vs = improvement([(areas[agent], areas[baseline])])
            area = float(np.mean(areas[agent]))
            rows.append(ComparisonRow(name, agent, 1, len(scores), area, mean, iq, vs))
    agents = list(dict.fromkeys(a for areas in panels.values() for a in areas))
    for agent in agents if len(panels) > 1 else []:
        has = [areas for areas in panels.values() if agent in areas]
        # a panel of one agent has no scale: it counts for P and seeds, not the mean and IQM
        scaled = [n[agent] for n in normalised_by_panel.values() if agent in n]
        scaled = [s for s in scaled if np.isfinite(s).all()]
        nan = Estimate(float("nan"), float("nan"), float("nan"))
        mean, iq = mean_and_iqm(scaled) if scaled else (nan, nan)
        pairs = [(areas[agent], areas[baseline]) for areas in has if baseline in areas]
        vs = improvement(pairs) if agent != baseline and pairs else None
        seeds = sum(len(areas[agent]) for areas in has)
        rows.append(ComparisonRow(AGGREGATE, agent, len(has), seeds, float("nan"), mean, iq, vs))
    return rows


def _profile(*samples: np.ndarray, taus: np.ndarray, axis: int = -1) -> np.ndarray:
    """For each tau, the fraction of runs above it, averaged over strata: (taus, ...)."""
    above = [
        np.mean(np.moveaxis(s, axis, -1)[..., None, :] > taus[:, None], axis=-1) for s in samples
    ]
    return np.moveaxis(np.mean(above, axis=0), -1, 0)


def performance_profile(
    samples: Sequence[np.ndarray], taus: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rliable's score distribution: for each tau, the fraction of runs with a normalised score
    above tau (each panel weighing the same), with its 95% stratified bootstrap band."""

    def statistic(*s, axis=-1):
        return _profile(*s, taus=taus, axis=axis)

    fraction = statistic(*samples)
    low, high = stratified_interval(samples, statistic, NUM_BOOTSTRAP)  # a band, as the curves'

    return fraction, low, high


# --------------------------------------------------------------------------------------------
# The comparison as text: Markdown (printed and saved) and CSV
# --------------------------------------------------------------------------------------------


def _two_decimals(x: float) -> str:
    return f"{round(x, 2) + 0.0:.2f}"  # + 0.0: -1e-17 (a worst agent's 0) prints as 0.00


def _estimate_text(e: Estimate | None) -> str:
    if e is None or not np.isfinite(e.value):
        return "n/a"
    if not (np.isfinite(e.low) and np.isfinite(e.high)):
        return f"{_two_decimals(e.value)} [n/a]"
    return f"{_two_decimals(e.value)} [{_two_decimals(e.low)}, {_two_decimals(e.high)}]"


def markdown_table(
    rows: list[ComparisonRow], baseline: str, label: Callable[[str], str] = str
) -> str:
    """The comparison as a Markdown table (agents by `label`), panels in order."""
    header = [
        "panel",
        "agent",
        "seeds",
        "area",
        "normalised mean [95% CI]",
        "normalised IQM [95% CI]",
        f"P(agent > {label(baseline)}) [95% CI]",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for panel in dict.fromkeys(r.panel for r in rows):
        in_panel = [r for r in rows if r.panel == panel]
        fmt = f"{{:.{decimals_for([r.area for r in in_panel])}f}}"
        for r in in_panel:
            where = panel if r.panel != AGGREGATE else f"{AGGREGATE} ({r.panels})"
            cells = [
                where,
                label(r.agent),
                str(r.seeds),
                fmt.format(r.area) if np.isfinite(r.area) else "",
                _estimate_text(r.mean),
                _estimate_text(r.iqm),
                "(baseline)" if r.agent == baseline else _estimate_text(r.improvement),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_HEADER = (
    "panel", "agent", "panels", "seeds", "area",
    "mean", "mean_low", "mean_high", "iqm", "iqm_low", "iqm_high",
    "p_improvement", "p_low", "p_high",
)  # fmt: skip


def csv_text(rows: list[ComparisonRow]) -> str:
    """The comparison as CSV, full precision; empty cells where a value does not apply."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in rows:
        vs = r.improvement or Estimate(float("nan"), float("nan"), float("nan"))
        numbers = [r.area, *r.mean, *r.iqm, *vs]
        writer.writerow(
            [r.panel, r.agent, r.panels, r.seeds]
            + [repr(float(x)) if np.isfinite(x) else "" for x in numbers]
        )
    return out.getvalue()
