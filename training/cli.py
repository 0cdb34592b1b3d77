"""Command lines whose errors are one line: a bad flag names itself, exit status 2. No jax."""

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


def number(kind, minimum, strict: bool = False):
    """An argparse type: an int or finite float >= minimum (> minimum when strict)."""
    name = {int: "an integer", float: "a number"}[kind]
    bound = f"{'>' if strict else '>='} {minimum}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        low = value > minimum if strict else value >= minimum
        if not (low and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {name} {bound}, got {text!r}")
        return value

    return parse
