"""TensorBoard's side of the live curves (`trackers.py`): one run, i.e. one folder of event
files, per tracker run under the log folder, written with tensorboardX (a writer of TensorBoard's
event files that needs only numpy and protobuf: no TensorFlow, no torch). Loaded only when
`--tensorboard` is given."""

from __future__ import annotations

import os

from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.summary import hparams

# TensorBoard's hparams dashboard compares runs by these metrics (their last values).
HPARAMS_METRIC = {"seed": "reward_rates", "mean": "reward_rates", "point": "reward_rates/mean"}


class TensorBoardRuns:
    """The event writers of `specs` (`trackers.RunSpec`) under `folder`. Each starts by purging
    from `first_step`: TensorBoard's reader drops the events at that step or later that an
    earlier, killed process of the same run wrote, so a resumed run's series has every step
    once. A run that starts at step 0 writes its hyperparameters (`hyperparameters`, one flat
    dict per spec) for the hparams dashboard."""

    def __init__(self, folder: str, specs, hyperparameters: list[dict], first_step: int):
        self.writers = []
        for spec, hparam_dict in zip(specs, hyperparameters, strict=True):
            writer = SummaryWriter(
                os.path.join(folder, spec.name),
                purge_step=first_step,
                filename_suffix=f".{os.getpid()}",  # a restart within the same second
            ).file_writer
            self.writers.append(writer)
            if first_step == 0:
                for summary in hparams(hparam_dict, {HPARAMS_METRIC[spec.kind]: None}):
                    writer.add_summary(summary)

    def log(self, t: int, logged: list[dict[str, float]]) -> None:
        """One evaluation at step `t`: each run's scalars as one event, flushed so that the
        curve is on disk (and on the screen) now."""
        for writer, values in zip(self.writers, logged, strict=True):
            summary = Summary(
                value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]
            )
            writer.add_summary(summary, global_step=t)
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
