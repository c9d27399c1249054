"""Weights-only checkpoints: ``model.pt`` (a state dict, loaded with ``weights_only=True``) beside ``model.json``
(the model name, its configuration and a fingerprint of the item vocabulary it was trained on)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from fedseqrec.data.sequences import SequenceData
from fedseqrec.errors import UserError
from fedseqrec.models.base import ModelConfig, SequentialRecommender
from fedseqrec.models.cooccurrence import ItemCooccurrence
from fedseqrec.models.device import resolve_device
from fedseqrec.models.registry import build_model

COUNTED = ("cooc",)  # models counted, not trained: their shapes are their state's


def _counted(path: Path, cfg: ModelConfig) -> ItemCooccurrence:
    try:
        return ItemCooccurrence.from_state(cfg, torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not the counts of a cooc model ({err})") from err


def vocabulary_fingerprint(data: SequenceData) -> str:
    digest = hashlib.sha256("\n".join(map(str, data.vocab.items[1:])).encode("utf-8"))
    return digest.hexdigest()[:16]


def describe(name: str, model: SequentialRecommender, data: SequenceData) -> dict:
    return {
        "model": name,
        "revision": model.revision,
        "config": model.cfg.to_dict(),
        "vocabulary": vocabulary_fingerprint(data),
    }


def save_weights(path: Path, model: SequentialRecommender) -> None:
    """Atomic: write beside, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


def save_checkpoint(
    folder: Path, model: SequentialRecommender, name: str, data: SequenceData, weights: str = "model.pt"
) -> None:
    save_weights(folder / weights, model)
    (folder / "model.json").write_text(json.dumps(describe(name, model, data), indent=2) + "\n")


def load_checkpoint(
    folder: Path, data: SequenceData, weights: str = "model.pt", device: str = "cpu"
) -> tuple[str, SequentialRecommender]:
    """The model saved in ``folder``, on ``device`` (``--device``: auto, cpu, cuda, cuda:N); refused when it was
    built for another vocabulary or its weights don't fit."""
    try:
        info = json.loads((folder / "model.json").read_text())
        cfg = ModelConfig.from_dict(info["config"])
        name = info["model"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{folder}: not a fedseqrec checkpoint (model.json unreadable: {err!r})") from err
    if info.get("vocabulary") != vocabulary_fingerprint(data) or cfg.n_items != data.n_items:
        raise UserError(
            f"{folder}: checkpoint was built for another item vocabulary ({cfg.n_items} items, fingerprint "
            f"{info.get('vocabulary')}) than this data ({data.n_items} items, {vocabulary_fingerprint(data)})"
        )
    model = _counted(folder / weights, cfg) if name in COUNTED else build_model(name, cfg, data)
    saved = info.get("revision", 1)  # written since revision 2; every earlier checkpoint is revision 1
    if saved != model.revision:
        raise UserError(
            f"{folder}: a {name} checkpoint of revision {saved}, and this release's {name} is revision "
            f"{model.revision}: {model.revision_note} — its weights would give wrong scores here; train it again"
        )
    try:
        state = torch.load(folder / weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError) as err:
        raise UserError(f"{folder / weights}: weights do not fit a {name} model ({err})") from err
    return name, model.to(resolve_device(device))
