"""What every ``vidplan`` command shares: :class:`CliError`, argparse ``type=`` checkers (a bad value names what was
expected) and :func:`check_device`. Imports nothing of the package, so any part's command module can use it."""

from __future__ import annotations

import argparse


class CliError(Exception):
    """Bad input on the command line; printed as ``vidplan: error: ...`` with exit status 2."""


def check_device(name: str | None) -> str | None:
    """``name`` when it is a usable torch device (``cpu``, ``cuda``, ``cuda:1``), None when not given; CliError
    naming ``--device`` otherwise. Imports torch only when a device is named."""
    if not name:
        return None
    import torch

    try:
        torch.device(name)
    except RuntimeError:
        raise CliError(f"--device {name}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine")
    return name


def _number(text: str, kind: type, expected: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def port(text: str) -> int:
    value = _number(text, int, "a port number")
    if not -1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (or -1 to disable), got {value}")
    return value
