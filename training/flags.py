"""Flags whose errors are one line: a bad flag names itself, exit status 2 (every script's
argparse). No jax."""

from __future__ import annotations

import argparse
import math


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line with exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(name: str):
    """An argparse type: an integer >= 1, named `name` in its error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


# A PRNG seed is two uint32 words of which a seed fills the lower: a larger or negative seed would
# share its key with one in this range (2**32 and 0 give the same key).
MAX_SEED = 2**32 - 1


def number(kind, minimum, strict: bool = False, maximum=math.inf):
    """An argparse type: an int or finite float >= minimum (> minimum when strict), <= maximum."""
    name = {int: "an integer", float: "a number"}[kind]
    bound = f"{'>' if strict else '>='} {minimum}" + (
        f" and <= {maximum}" if maximum < math.inf else ""
    )

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        low = value > minimum if strict else value >= minimum
        if not (low and value <= maximum and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {name} {bound}, got {text!r}")
        return value

    return parse
