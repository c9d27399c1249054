"""The ``fedseqrec`` command: one module per group of subcommands (``data``, ``train`` / ``evaluate``,
``simulate`` / ``deploy``, ``report``), each registering its own parser. Flags come from the option declarations
of the configs (:mod:`fedseqrec.options`).

Conventions every subcommand keeps: ``--data NAME_OR_PATH`` (default: the built-in ``shop``) with ``--format``,
``--seed``, and ``--out DIR`` for the folder a command writes to. Bad input prints one line and exits 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedseqrec import __version__
from fedseqrec.cli import data, federate, report, serve, train
from fedseqrec.cli.common import Handler, debug_option
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
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
    except Exception as err:
        if args.debug:
            raise
        print(
            f"fedseqrec: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
