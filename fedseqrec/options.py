"""Options declared once: a dataclass field with :func:`option` carries its help, choices and check, and everything
else follows from it — the CLI flags (:func:`add_options`), the flat run config of Flower
(``[tool.flwr.app.config]``, :func:`flatten` / :func:`unflatten`) and validation (:func:`check`).

An option may also carry where ``fedseqrec tune`` searches it (``search=``: a :class:`Space`).

Configs nest (a run holds data, model, fit, algorithm, evaluation and privacy sections); an option's flag and
run-config key are its field name with hyphens (or ``key=``), and keys are unique across a nested config, so the
flat run config stays what it always was. TOML has no null: an unset optional option is ``""`` in the run config.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence

from fedseqrec.errors import UserError

Check = Callable[[object], str | None]  # the problem with a value, or None


@dataclasses.dataclass(frozen=True)
class Space:
    """Where ``fedseqrec tune`` searches an option: a range (``log``: on a log scale, as rates are) or a list of
    values. Integers in a range stay integers."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple = ()

    def __post_init__(self):
        if not self.values and (self.low is None or self.high is None or not self.low < self.high):
            raise ValueError(f"a search range needs low < high, got {self.low}, {self.high}")
        if self.log and not self.values and self.low <= 0:
            raise ValueError(f"a log-scale search range must be positive, got {self.low}")

    def describe(self) -> str:
        if self.values:
            return ",".join(str(v) for v in self.values)
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


def span(low: float, high: float, *, log: bool = False) -> Space:
    """A search range from ``low`` to ``high`` (both included)."""
    return Space(low, high, log)


def one_of(*values) -> Space:
    """A search over these values only."""
    return Space(values=tuple(values))


def option(
    default,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    check: Check | None = None,
    key: str | None = None,
    group: str | None = None,
    metavar: str | None = None,
    run_config: bool = True,
    search: Space | None = None,
) -> dataclasses.Field:
    """A config field that is also a CLI flag and (unless ``run_config=False``) a run-config key; ``search``:
    where ``fedseqrec tune`` searches it."""
    meta = {
        "search": search,
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "check": check,
        "key": key,
        "group": group,
        "metavar": metavar,
        "run_config": run_config,
    }
    return dataclasses.field(default=default, metadata={"option": meta})


def redefault(cls: type, name: str, default) -> dataclasses.Field:
    """The option ``name`` of ``cls`` with another default (a subclass that trains differently): declared once."""
    declared_field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=default, metadata=declared_field.metadata)


def section(factory: Callable[[], object]) -> dataclasses.Field:
    """A nested config (its options are flattened into the parent's flags and run config)."""
    return dataclasses.field(default_factory=factory)


# --- checks -------------------------------------------------------------------------------------------------------


def positive_int(value) -> str | None:
    return None if value >= 1 else "must be a positive integer"


def non_negative_int(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def positive(value) -> str | None:
    return None if math.isfinite(value) and value > 0 else "must be a positive number"


def non_negative(value) -> str | None:
    return None if math.isfinite(value) and value >= 0 else "must be >= 0"


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> Check:
    def check(value) -> str | None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if math.isfinite(value) and above and below:
            return None
        return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    return check


# --- introspection ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Declared:
    """One option as declared: its field, where it sits in a nested config, and its metadata."""

    path: tuple[str, ...]  # attribute names from the top config down to the field
    name: str
    hint: object
    default: object
    meta: dict

    @property
    def key(self) -> str:
        return self.meta["key"] or self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        return f"--{self.key}"

    @property
    def dest(self) -> str:
        return self.key.replace("-", "_")

    @property
    def base_type(self) -> type:
        return _base_type(self.hint)

    @property
    def optional(self) -> bool:
        return _is_optional(self.hint)


def _is_optional(hint) -> bool:
    return isinstance(hint, types.UnionType | typing._UnionGenericAlias) and type(None) in typing.get_args(hint)


def _base_type(hint) -> type:
    if _is_optional(hint):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def declared(config, path: tuple[str, ...] = ()) -> Iterator[Declared]:
    """Every option of a config instance (or class), nested sections included, with the instance's values as
    defaults."""
    instance = config() if isinstance(config, type) else config
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if "option" in f.metadata:
            yield Declared((*path, f.name), f.name, hints[f.name], value, f.metadata["option"])
        elif dataclasses.is_dataclass(value):
            yield from declared(value, (*path, f.name))


def _get(config, path: tuple[str, ...]):
    for name in path:
        config = getattr(config, name)
    return config


def _with(config, path: tuple[str, ...], value):
    """A copy of ``config`` with the field at ``path`` set (nested sections copied, never shared)."""
    head, *rest = path
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _with(getattr(config, head), tuple(rest), value)})


def with_values(config, values: Mapping[str, object]):
    """A copy of ``config`` with options set by field name or run-config key (``batch_size`` or ``batch-size``)."""
    by_name = {}
    # On a name shared by two sections (data.max_len, model.max_len), the run-config option wins.
    for d in sorted(declared(config), key=lambda d: d.meta["run_config"]):
        by_name[d.name] = by_name[d.key] = by_name[d.dest] = d
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise TypeError(f"unknown options {', '.join(unknown)} for {type(config).__name__}")
    for name, value in values.items():
        config = _with(config, by_name[name].path, value)
    return config


# --- checks over a whole config -----------------------------------------------------------------------------------


def check(config) -> None:
    """Every declared option's choices and check; the first problem is a UserError naming the flag."""
    for d in declared(config):
        value = _get(config, d.path)
        if value is None and d.optional:
            continue
        if d.meta["choices"] is not None and value not in d.meta["choices"]:
            raise UserError(f"unknown {d.key} {value!r}; expected one of {', '.join(d.meta['choices'])}")
        problem = d.meta["check"](value) if d.meta["check"] is not None else None
        if problem:
            raise UserError(f"{d.flag} {problem}, got {value}")


# --- Flower's flat run config -------------------------------------------------------------------------------------


def flatten(config) -> dict:
    """The run config of ``config``: hyphenated keys, ``""`` for unset."""
    return {d.key: ("" if (v := _get(config, d.path)) is None else v) for d in declared(config) if d.meta["run_config"]}


def unflatten(cls: type, values: Mapping[str, object]):
    """A config from Flower's run config (hyphenated keys, ``""`` for unset); unknown keys are refused."""
    config = cls()
    known = {d.key: d for d in declared(config) if d.meta["run_config"]}
    unknown = sorted(set(values) - set(known))
    if unknown:
        near = [m for key in unknown for m in difflib.get_close_matches(key, list(known), n=1)]
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise UserError(f"unknown run-config keys: {', '.join(unknown)}; {hint}known: {', '.join(sorted(known))}")
    for key, value in values.items():
        d = known[key]
        config = _with(config, d.path, _coerce(key, value, d))
    return config


def _coerce(key: str, value, d: Declared):
    if d.optional and (value == "" or value is None):
        return None
    hint = d.base_type
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif hint is str and isinstance(value, str):
        return value
    elif hint in (int, float) and isinstance(value, str):
        try:
            return hint(value)
        except ValueError:
            pass
    raise UserError(f"run-config {key} = {value!r}: expected {hint.__name__}" + (" or empty" if d.optional else ""))


def toml_value(value) -> str:
    """A run-config value as TOML writes it (strings JSON-quoted: a valid TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def toml_table(values: Mapping[str, object]) -> list[str]:
    """``key = value`` lines of a flat run config (the body of ``[tool.flwr.app.config]``)."""
    return [f"{key} = {toml_value(value)}" for key, value in values.items()]


# --- the command line ---------------------------------------------------------------------------------------------


def add_options(
    parser: argparse.ArgumentParser,
    config,
    *,
    exclude: Sequence[str] = (),
    choices: Mapping[str, Sequence[str]] | None = None,
    groups: dict[str, argparse._ArgumentGroup] | None = None,
) -> None:
    """One flag per declared option of ``config`` (an instance: its values are the defaults shown), in the
    argument group the option names. ``exclude``: field names, dotted paths (``data.max_len``) or group names
    left out; ``choices``: a command's
    narrower choices for an option."""
    groups = {} if groups is None else groups
    for d in declared(config):
        if excluded(d, exclude):
            continue
        title = d.meta["group"] or "options"
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = groups[title]
        kwargs: dict = {"dest": d.dest, "help": d.meta["help"]}
        if d.meta["metavar"]:
            kwargs["metavar"] = d.meta["metavar"]
        allowed = (choices or {}).get(d.name, d.meta["choices"])
        if d.base_type is bool:
            if d.default:
                target.add_argument(f"--no-{d.key}", action="store_false", default=True, **kwargs)
            else:
                target.add_argument(d.flag, action="store_true", default=False, **kwargs)
            continue
        target.add_argument(d.flag, type=d.base_type, default=d.default, choices=allowed, **kwargs)


def excluded(d: Declared, exclude: Sequence[str]) -> bool:
    return d.name in exclude or d.meta["group"] in exclude or ".".join(d.path) in exclude


def from_args(config, args: argparse.Namespace, exclude: Sequence[str] = ()):
    """``config`` with every declared option that ``args`` holds (see :func:`add_options`)."""
    for d in declared(config):
        if excluded(d, exclude) or not hasattr(args, d.dest):
            continue
        value = getattr(args, d.dest)
        if value is None and not d.optional:  # a flag the command parses as unset (see cli.common.unset_defaults)
            continue
        config = _with(config, d.path, value)
    return config


def to_argv(config, exclude: Sequence[str] = ()) -> list[str]:
    """The flags that rebuild ``config`` from its class's defaults (see :func:`add_options`): one per option whose
    value differs from its default. An unset optional option whose default is set has no flag: refused."""
    defaults = {d.path: d.default for d in declared(type(config))}
    argv: list[str] = []
    for d in declared(config):
        if excluded(d, exclude) or d.default == defaults[d.path]:
            continue
        if d.base_type is bool:
            argv.append(f"--no-{d.key}" if defaults[d.path] else d.flag)
        elif d.default is None:
            raise ValueError(f"{d.flag}: unset, and no flag unsets it (its default is {defaults[d.path]!r})")
        else:
            argv += [d.flag, str(d.default)]
    return argv
