"""Weights & Biases' side of the live curves (`trackers.py`): one W&B run per tracker run, in
one process (`reinit="create_new"`), with environment steps as W&B's step. Loaded only when
`--wandb` is given. Offline (`--wandb-mode offline`, for compute nodes without internet), the
runs are written under `$WANDB_DIR/wandb/offline-run-*` for `wandb sync` later."""

from __future__ import annotations

import os
import secrets

import wandb

# Lean runs: no copy of the console, of the code, git state or pip list, no system-metrics
# sampler per run (a 30-seed run has 31 runs in one process; the console is the job's log).
SETTINGS = dict(
    console="off",
    x_disable_stats=True,
    x_disable_meta=True,
    disable_git=True,
    save_code=False,
    x_save_requirements=False,
    silent=True,
)


class WandbRuns:
    """The W&B runs of `specs` (`trackers.RunSpec`) in `project`; `configs` their W&B config,
    one per spec. A run whose name `saved` (the checkpoint's) gives an id is resumed under it:
    requeued and restarted jobs continue the same runs. The first run that cannot start (not
    logged in, no network) raises, after the runs already started are finished.

    W&B writes a run's records to disk (and sends them) every 15 s, so a killed process loses
    its last ones: a resumed run is given its checkpoint's evaluations again (`replays`), of
    which each run logs those from its current step on, the step after the last one W&B holds
    (online; offline W&B cannot know, so all of them: W&B ignores a resumed run's steps below
    its current one when the offline segments are synced)."""

    replays = True

    def __init__(self, project: str, mode: str, specs, configs: list[dict], saved: dict):
        self.runs = []
        # W&B suggests its LLM tracer when a module named `agents` is loaded: ours is agents.py.
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        try:
            for spec, config in zip(specs, configs, strict=True):
                run = wandb.init(
                    project=project,
                    mode=mode,
                    id=saved.get(spec.name) or secrets.token_hex(6),  # W&B's kind: [0-9a-z]
                    resume="allow",
                    name=spec.name,
                    group=spec.group,
                    job_type=spec.kind,
                    config=config,
                    reinit="create_new",
                    settings=wandb.Settings(**SETTINGS),
                )
                self.runs.append(run)
        except BaseException:
            self.close()
            raise
        self.ids = {spec.name: run.id for spec, run in zip(specs, self.runs, strict=True)}

    def log(self, t: int, logged: list[dict[str, float]]) -> None:
        for run, values in zip(self.runs, logged, strict=True):
            if t >= run.step:  # what W&B holds of the run is not sent twice
                run.log(values, step=t)

    def run_ids(self) -> dict[str, str]:
        return self.ids

    def close(self) -> None:
        for run in self.runs:
            run.finish()
        self.runs = []
