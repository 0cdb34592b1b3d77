"""`reproduce_figure4.py` whose jobs bring a cluster's faults (`slurm_jobs.FaultyTrainingJob`),
for the driver's SLURM tests: `FIGURE4_FAULTS` holds the job's arguments as JSON, e.g.
`{"pause": 1, "stall": 300, "deaths": {"ER_ProcMaze_low": 9}}`; `FIGURE4_START_AT` (seconds
since the epoch) holds it until then, so that two drivers start at the same instant.
Everything else is the driver as a user runs it."""

import json
import os
import sys
import time

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))
sys.path.insert(0, TESTS)
os.environ["PYTHONPATH"] = os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])

import slurm_jobs  # noqa: E402

import reproduce_figure4  # noqa: E402
from figure4 import jobs  # noqa: E402

if __name__ == "__main__":
    time.sleep(max(0.0, float(os.environ.get("FIGURE4_START_AT", 0)) - time.time()))
    faults = json.loads(os.environ.get("FIGURE4_FAULTS", "{}"))
    jobs.TrainingJob = lambda: slurm_jobs.FaultyTrainingJob(**faults)
    sys.exit(reproduce_figure4.main())
