"""What every subcommand shares: the help formatter, ``--debug``, registering a command, and turning parsed flags
into the typed configs the commands run with (the flags themselves come from the option declarations)."""

from __future__ import annotations

import argparse
import difflib
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fedseqrec.cli.examples import examples_of
from fedseqrec.cli.parser import Formatter
from fedseqrec.data.dataset import PARTITION, DataConfig
from fedseqrec.errors import UserError
from fedseqrec.models.config import DeviceConfig, ModelConfig
from fedseqrec.options import add_options, declared, from_args

if sys.version_info >= (3, 11):
    import tomllib
else:  # (Python 3.10: the same parser, as a package)
    import tomli as tomllib

Handler = Callable[[argparse.Namespace], int]


def debug_option(parser: argparse.ArgumentParser, top: bool) -> None:
    # On subcommands the default is suppressed so `fedseqrec --debug data stats` is not reset by the subparser.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the full traceback on errors",
    )


def add_command(commands: argparse._SubParsersAction, name: str, handler: Handler | str) -> argparse.ArgumentParser:
    """A subcommand whose help is its handler's docstring (first line: the summary; the rest: the description),
    or, for a group of subcommands, that text itself."""
    text = handler if isinstance(handler, str) else inspect.getdoc(handler)
    summary, _, description = text.partition("\n\n")
    parser = commands.add_parser(
        name,
        help=summary,
        description=" ".join(description.split()) or summary,
        formatter_class=Formatter,
        epilog=examples_of(commands, name),
    )
    debug_option(parser, top=False)
    if not isinstance(handler, str):
        parser.set_defaults(handler=handler)
    return parser


def add_data_location(parser: argparse.ArgumentParser) -> None:
    """``--data`` for a command that reads a run folder: where the run's data is now."""
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="where the run's data is now (default: the path the run recorded); refused unless it holds the same "
        "files (the run records their fingerprint)",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` for a command that only scores (evaluate, audit, recommend, serve): where the model runs."""
    add_options(parser, DeviceConfig(), exclude=("precision",))


def add_data_options(parser: argparse.ArgumentParser, *, truncate: bool, partition: bool | str) -> None:
    """``--data`` and friends: which log to read, how to clean it, how to split it (and partition it).

    ``truncate``: offer ``--max-len`` to cut the data itself (training commands use it for the model's window);
    ``partition``: offer the partition options (a scheme name: with it as the default)."""
    exclude = [name for name, offered in (("max_len", truncate), (PARTITION, partition)) if not offered]
    defaults = DataConfig(partition=partition) if isinstance(partition, str) else DataConfig()
    add_options(parser, defaults, exclude=exclude)


def data_config(args: argparse.Namespace, truncate: bool = True) -> DataConfig:
    return from_args(DataConfig(), args, exclude=() if truncate else ("max_len",))


def model_config(args: argparse.Namespace) -> ModelConfig:
    return from_args(ModelConfig(), args)


def unset_defaults(parser: argparse.ArgumentParser, config, names: Sequence[str] | None = None, absent=None) -> None:
    """Flags whose absence a command must tell from their default (``--rounds`` on ``--resume``): parsed as
    ``absent`` (None, or ``argparse.SUPPRESS`` to leave them out of the namespace); their help still names the
    declared default. ``names``: field names (default: every option of ``config``)."""
    defaults = {d.dest: d.default for d in declared(config) if names is None or d.name in names}
    for action in parser._actions:
        if action.dest in defaults:
            action.default = absent
            if absent == argparse.SUPPRESS:  # left out: the command takes the value its input recorded
                action.help = f"{action.help} (default: the run's own)"
            elif defaults[action.dest] not in (False, True):
                shown = "none" if defaults[action.dest] is None else defaults[action.dest]
                action.help = f"{action.help} (default: {shown})"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: options from a TOML file (``fedseqrec tune`` writes one for its best trial)."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML file of options, one `key = value` line each, keys as the flags without -- (the best.toml "
        "`fedseqrec tune` writes); flags on the command line win over it",
    )
    parser.set_defaults(config_parser=parser)


def with_config_file(top: argparse.ArgumentParser, args: argparse.Namespace, argv) -> argparse.Namespace:
    """``args`` again, with the options of ``--config FILE`` as the defaults of its command's flags."""
    path = getattr(args, "config", None)
    if not path:
        return args
    command = args.config_parser
    command.set_defaults(**read_config_file(Path(path), command))
    again = top.parse_args(argv)
    again.argv = args.argv
    return again


def read_config_file(path: Path, parser: argparse.ArgumentParser) -> dict:
    """The flags' values a config file sets, checked against ``parser``'s flags (name, type and choices)."""
    try:
        values = tomllib.loads(path.read_text())
    except OSError as err:
        raise UserError(f"--config {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"--config {path}: not TOML ({err})") from err
    flags = {s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--")}
    found = {}
    for key, value in values.items():
        action = flags.get(key) or flags.get(f"no-{key}")
        if action is None or key in ("config", "out", "help", "debug"):
            near = difflib.get_close_matches(key, list(flags), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise UserError(f"--config {path}: {key} is not an option of this command{hint}")
        found[action.dest] = _config_value(path, key, value, action)
    return found


def _config_value(path: Path, key: str, value, action: argparse.Action):
    where = f"--config {path}: {key} = {value!r}"
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false")
        return value
    if isinstance(value, dict | list | bool):
        raise UserError(f"{where}: expected a {getattr(action.type, '__name__', 'value')}")
    if value == "":
        return None
    kind = action.type or str
    if kind is int and isinstance(value, float) or kind is str and not isinstance(value, str):
        raise UserError(f"{where}: expected {kind.__name__}")
    try:
        value = kind(value)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: expected {kind.__name__}") from err
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where}: expected one of {', '.join(map(str, action.choices))}")
    return value
