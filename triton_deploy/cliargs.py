"""Argument helpers every subcommand shares: the common flags and comma-separated list types."""

from __future__ import annotations

import argparse

PROG = "triton-deploy"  # the command name every subcommand's messages start with


def add_common_flags(parser: argparse.ArgumentParser, json_help: str = "print a machine-readable summary on stdout"):
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def int_list(text: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    """'0.485,0.456,0.406' -> (0.485, 0.456, 0.406)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def word_list(text: str) -> tuple[str, ...]:
    """'png, jpeg' -> ('png', 'jpeg')."""
    return tuple(v.strip() for v in text.split(",") if v.strip())
