"""The command line's parser: a mistake is one line (and "did you mean" when a flag or a choice is mistyped), the
usage only with ``--help``; every ``--help`` shows each option's default and ends with examples."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import NoReturn

UNKNOWN = re.compile(r"unrecognized arguments: (.*)")
CHOICE = re.compile(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)")


class Parser(argparse.ArgumentParser):
    """``argparse`` with errors of one line, exit status 2, and suggestions for near misses."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {self._suggest(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)

    def _suggest(self, message: str) -> str:
        unknown = UNKNOWN.match(message)
        if unknown:
            flags = sorted(_all_flags(self))
            for token in unknown.group(1).split():
                near = difflib.get_close_matches(token.split("=")[0], flags, n=1) if token.startswith("--") else []
                if near:
                    return f"{message}; did you mean {near[0]}?"
            return message
        choice = CHOICE.match(message)
        if choice:
            flag, given, allowed = choice.groups()
            options = [c.strip(" '") for c in allowed.split(",")]
            near = difflib.get_close_matches(given, options, n=1)
            return f"{flag}: {given!r} is not one of {', '.join(options)}" + (
                f"; did you mean {near[0]}?" if near else ""
            )
        return message


def _all_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every long flag of ``parser`` and of its subcommands (the top parser reports a subcommand's leftovers)."""
    flags = set()
    for action in parser._actions:  # argparse has no public walk of its actions
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _all_flags(sub)
    return flags


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unset: "none"), except where the help already states it; a flag that is off
    unless given has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default == argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction | argparse._HelpAction | argparse._VersionAction):
            return text
        shown = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {shown})"
