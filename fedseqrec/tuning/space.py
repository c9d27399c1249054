"""The search space of a study: the options a study searches, each with the range declared beside the option
(``search=`` in its declaration) or the one ``--search KEY=LOW:HIGH[:log]`` / ``KEY=A,B,C`` gives instead."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from fedseqrec.errors import UserError
from fedseqrec.options import Declared, Space, declared
from fedseqrec.privacy.config import DP_FEDAVG, USER_LEVEL

# Searched when --search names nothing: what matters most for each kind of run (the other declared ranges are
# there to be named).
DEFAULT_SEARCH = {
    "train": ("lr", "weight-decay", "dropout", "label-smoothing"),
    "simulate": ("lr", "weight-decay", "dropout", "local-epochs"),
}
SERVER_STEPS = ("fedadam", "fedyogi", "fedadagrad", "fedavgm")  # strategies with a server learning rate


def default_search(command: str, config) -> tuple[str, ...]:
    """What a study searches when --search names nothing. A private run's step is its clipping norm and, under
    user-level DP, the server's rate (the clients send clipped gradients, not AdamW steps)."""
    privacy = getattr(config, "privacy", None)
    if privacy is None or not privacy.private:
        return DEFAULT_SEARCH[command]
    if privacy.mechanism == USER_LEVEL:
        server = ("server-lr",) if config.algorithm.strategy in SERVER_STEPS else ()
        local = ("user-lr",) if privacy.user_steps > 1 else ()
        return ("max-grad-norm", *server, *local, "dropout")
    clip = "clipping-norm" if privacy.mechanism == DP_FEDAVG else "max-grad-norm"
    return ("lr", clip, "dropout")


@dataclass(frozen=True)
class Dimension:
    """One searched option: its declaration and its range."""

    option: Declared
    space: Space

    @property
    def key(self) -> str:
        return self.option.key

    @property
    def kind(self) -> type:
        return self.option.base_type

    def suggest(self, trial):
        """The value Optuna's ``trial`` draws for this option."""
        space = self.space
        if space.values:
            return trial.suggest_categorical(self.key, list(space.values))
        if self.kind is int:
            return trial.suggest_int(self.key, int(space.low), int(space.high), log=space.log)
        return trial.suggest_float(self.key, float(space.low), float(space.high), log=space.log)

    def grid(self, points: int) -> list:
        """The values a grid search tries: the listed ones, or ``points`` spread over the range (log-spaced on a
        log scale; distinct integers for an integer option)."""
        space = self.space
        if space.values:
            return list(space.values)
        spots = [0.5] if points == 1 else [i / (points - 1) for i in range(points)]
        if space.log:
            low, high = math.log(space.low), math.log(space.high)
            values = [math.exp(low + s * (high - low)) for s in spots]
        else:
            values = [space.low + s * (space.high - space.low) for s in spots]
        if self.kind is int:
            return sorted({round(v) for v in values})
        return [float(f"{v:.4g}") for v in values]


def parse_space(text: str, option: Declared) -> Space:
    """``LOW:HIGH``, ``LOW:HIGH:log`` or ``A,B,C`` for ``option``, typed as the option is."""
    kind = option.base_type
    where = f"--search {option.key}={text}"
    try:
        if ":" in text:
            parts = text.split(":")
            log = len(parts) == 3 and parts[2] == "log"
            if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
                raise ValueError("expected LOW:HIGH or LOW:HIGH:log")
            return Space(kind(parts[0]) if kind is int else float(parts[0]), float(parts[1]), log)
        values = tuple(_typed(v, kind) for v in text.split(","))
        return Space(values=values)
    except (ValueError, TypeError) as err:
        raise UserError(f"{where}: {err}") from err


def _typed(text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() == "true"
    return kind(text)


def search_space(config, given: list[str], default: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[Dimension]:
    """The dimensions of a study over ``config`` (an instance of the run's config): each ``KEY`` or
    ``KEY=SPACE`` of ``given`` (``--search``), or the ``default`` keys when none is given."""
    options = {d.key: d for d in declared(config) if ".".join(d.path) not in exclude}
    dimensions, seen = [], set()
    for item in given or list(default):
        key, _, text = item.partition("=")
        key = key.strip().lstrip("-")
        if key not in options:
            near = difflib.get_close_matches(key, list(options), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise UserError(f"--search {item}: no option {key} in this command{hint}")
        if key in seen:
            raise UserError(f"--search names {key} twice")
        seen.add(key)
        option = options[key]
        space = parse_space(text, option) if text else option.meta["search"]
        if space is None:
            raise UserError(f"--search {key}: the option declares no range: give one, as {key}=LOW:HIGH or {key}=A,B")
        if option.base_type is bool and not space.values:
            raise UserError(f"--search {key}: an on/off option is searched over values: {key}=true,false")
        dimensions.append(Dimension(option, space))
    return dimensions
