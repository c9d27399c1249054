"""The ``fedseqrec`` command: one module per group of subcommands (``data``, ``train`` / ``evaluate``,
``simulate`` / ``deploy``, ``report``), each registering its own parser. Flags come from the option declarations
of the configs (:mod:`fedseqrec.options`).

Conventions every subcommand keeps: ``--data NAME_OR_PATH`` (default: the built-in ``shop``) with ``--format``,
``--seed``, and ``--out DIR`` for the folder a command writes to. Bad input prints one line and exits 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedseqrec import __version__
from fedseqrec.cli import data, federate, report, serve, train, tune
from fedseqrec.cli.common import Handler, debug_option, with_config_file
from fedseqrec.cli.examples import examples_of
from fedseqrec.cli.parser import Formatter, Parser
from fedseqrec.errors import RunError, UserError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fedseqrec",
        description="Federated, differentially private training of sequence recommenders.",
        formatter_class=Formatter,
        epilog=examples_of(None, "fedseqrec"),
    )
    parser.add_argument("--version", action="version", version=f"fedseqrec {__version__}")
    debug_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data.register(commands)
    train.register(commands)
    federate.register_simulate(commands)
    federate.register_deploy(commands)
    report.register(commands)
    serve.register(commands)
    tune.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # (`tune --jobs N` starts its workers with it)
    try:
        args = with_config_file(parser, args, args.argv)
        handler: Handler = args.handler
        return handler(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"fedseqrec: error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        if args.debug:
            raise
        print(f"fedseqrec: run stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedseqrec: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        if args.debug:
            raise
        problem = file_system_problem(err)
        if problem is None:
            return _internal(err)
        print(f"fedseqrec: error: {problem}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.debug:
            raise
        return _internal(err)


# What the file system refuses is the user's to fix (permissions, a read-only mount, a full disk): one line, exit 2.
FILE_SYSTEM_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


def file_system_problem(err: OSError) -> str | None:
    """What the user can act on in ``err``, naming the path they gave (a temporary file we write first stands for
    its folder); None: not a file-system refusal."""
    what = FILE_SYSTEM_ERRORS.get(err.errno)
    if what is None:
        return None
    path = Path(err.filename) if err.filename else None
    if path is not None and path.name.startswith(".") and ".tmp" in path.name:
        path = path.parent  # (files are written to a temporary name first, then renamed)
    while path is not None and path.parent != path and not os.access(path.parent, os.R_OK | os.X_OK):
        path = path.parent  # the folder that cannot be opened, not a file inside it
    fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "check its permissions"
    return f"{path}: {what} ({fix})" if path is not None else f"{what} ({fix})"


def _internal(err: Exception) -> int:
    print(
        f"fedseqrec: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return 1
