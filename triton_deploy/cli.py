"""``triton-deploy``: a thin command line over the typed core.

Each subcommand turns its flags into a frozen options dataclass and calls one function; everything it does is
callable from Python. Errors from the core are ``TritonDeployError`` subclasses: one line on stderr, the error's own
exit code, a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .cliargs import PROG
from .clients.cli import add_classify, add_evaluate
from .errors import TritonDeployError
from .export.cli import add_export
from .loadtests.cli import add_bench, add_loadtest
from .monitoring.cli import add_monitor
from .optimize.cli import add_optimize, add_tensorrt_check
from .progress import Reporter
from .repository.cli import add_repo
from .server.cli import add_serve
from .tuning.cli import add_tune


class _Parser(argparse.ArgumentParser):
    """argparse with a 'did you mean' hint for misspelt options and subcommands."""

    def error(self, message: str):  # noqa: D401  (argparse API)
        hint = ""
        match = re.search(r"unrecognized arguments: (\S+)", message) or re.search(r"invalid choice: '([^']+)'", message)
        if match:
            close = difflib.get_close_matches(match.group(1).split("=")[0], sorted(_known_words(self)), n=1)
            if close:
                hint = f" (did you mean {close[0]}?)"
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def _subcommand_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices[command]


def _known_words(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings and subcommand names of ``parser`` itself: a subcommand's options are not suggested for
    another one (``serve --port`` had been offered ``--exports``)."""
    words: set[str] = set()
    for action in parser._actions:
        words.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            words.update(action.choices)
    return words


# ---- entry point ----------------------------------------------------------------------------------------------

# In the order `--help` lists them: the pipeline first, then what builds on it.
SUBCOMMANDS: list[Callable] = [add_export, add_repo, add_serve, add_classify, add_evaluate, add_loadtest, add_bench,
                               add_optimize, add_tensorrt_check, add_tune, add_monitor]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Deploy image classifiers on NVIDIA Triton Inference Server.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ info logs would bury our progress output
    # gRPC's core logs a failed TLS handshake at INFO on stderr, beside the one-line error that explains it.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the subcommand: its own usage line, and suggestions from its own options only
        _subcommand_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    reporter = Reporter(quiet=getattr(args, "quiet", False))
    try:
        return args.handler(args, reporter)
    except TritonDeployError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed_by_reader()


def _stdout_closed_by_reader() -> int:
    """The reader of stdout went away (``classify ... | head``): stop quietly, as Unix tools do.

    Python ignores SIGPIPE, so the write raised instead of ending the process. stdout now points at /dev/null so
    the interpreter's final flush cannot raise a second time, and the exit code is the one a process ended by
    SIGPIPE gets (128 + 13 = 141), as coreutils' tools report in the same place: not 0, because the output was cut
    short and the remaining images were never printed; a shell without ``pipefail`` shows head's status anyway."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
