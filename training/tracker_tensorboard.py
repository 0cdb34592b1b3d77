"""TensorBoard's side of the live curves (`trackers.py`): one run, i.e. one folder of event
files, per tracker run under the log folder, written with TensorBoard's own event writer (no
TensorFlow needed; the same package reads the files and serves them). Loaded only when
`--tensorboard` is given."""

from __future__ import annotations

import time

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class TensorBoardRuns:
    """The event writers of `specs` (`trackers.RunSpec`) under `folder`. Each starts with a
    restart marker at `first_step` (TensorBoard's purge: its reader drops the events at that
    step or later that an earlier, killed process of the same run wrote), so a resumed run's
    series has every step once. A run that starts at step 0 writes its hyperparameters
    (`hyperparameters`, one flat dict per spec) for the hparams dashboard."""

    def __init__(self, folder: str, specs, hyperparameters: list[dict], first_step: int):
        self.writers = []
        for spec, hparam_dict in zip(specs, hyperparameters, strict=True):
            writer = EventFileWriter(f"{folder}/{spec.name}")
            self.writers.append(writer)
            restart = SessionLog(status=SessionLog.START)
            writer.add_event(Event(wall_time=time.time(), step=first_step, session_log=restart))
            if first_step == 0:
                hparams = hparams_pb(hparam_dict, trial_id=spec.name)
                writer.add_event(Event(wall_time=time.time(), step=0, summary=hparams))
            writer.flush()

    def log(self, t: int, logged: list[dict[str, float]]) -> None:
        """One evaluation at step `t`: each run's scalars as one event, flushed (written to the
        file, not synced), so that the curve is on the screen now and a kill loses none."""
        now = time.time()
        for writer, values in zip(self.writers, logged, strict=True):
            summary = Summary(
                value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]
            )
            writer.add_event(Event(wall_time=now, step=t, summary=summary))
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
