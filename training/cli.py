"""The command line of every `train_<agent>.py`: `main(DEFINITION)` parses the reference's flags
(SPEC section 1: `--seed`, `--config`, `--output`) and ours, and calls `experiment.run`.

A run that cannot start or go on prints one line and exits: status 2 for a bad config or flag,
1 for a file that could not be written, 128 + the signal's number when a signal stopped it.
"""

from __future__ import annotations

import argparse
import signal
import sys

from training import experiment, trackers
from training.definition import AgentDefinition
from training.flags import MAX_SEED, OneLineErrorParser, number


def parse_args(agent_type: str, argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(description=f"Train the {agent_type} agent.")
    parser.add_argument(
        "--seed", "-s", type=number(int, 0, maximum=MAX_SEED), default=0, help="master PRNG seed"
    )
    parser.add_argument("--config", "-c", required=True, help="path to a JSON config")
    parser.add_argument("--output", "-o", default=agent_type, help="output prefix")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or logs")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from the checkpoint <output>.ckpt of an interrupted run (if there is one)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start again from step 0 over the checkpoint <output>.ckpt of an earlier run "
        "(which a run without --resume or --restart refuses to replace)",
    )
    parser.add_argument(
        "--accept-version-change",
        action="store_true",
        help="--resume even from a checkpoint that another version of the code, of jax, "
        "jaxlib, haiku or optax, or another kind of device wrote",
    )
    trackers.add_flags(parser)
    args = parser.parse_args(argv)
    if error := trackers.flag_error(args):
        parser.error(error)
    return args


def main(definition: AgentDefinition, argv: list[str] | None = None) -> experiment.Written:
    """Entry point of every `train_*.py`: parse flags and `experiment.run`."""
    args = parse_args(definition.agent_type, argv)
    try:
        return experiment.run(
            definition,
            args.config,
            args.output,
            seed=args.seed,
            resume=args.resume,
            quiet=args.quiet,
            accept_version_change=args.accept_version_change,
            restart=args.restart,
            trackers=trackers.from_flags(args),
        )
    except experiment.RunError as error:
        print(error, file=sys.stderr)
        sys.exit(error.status)
    except KeyboardInterrupt:  # Ctrl-C before training began, or a second one during it
        print(
            "interrupted: the files written so far are whole; --resume goes on from the last "
            "checkpoint, if one was written",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGINT)
