"""Recommendations from a trained model: ``load_recommender(path).recommend(history, k=10)``.

``path`` is a folder `fedseqrec train` or `simulate` wrote (``model.json``, ``model.pt``, ``config.json``); the item
vocabulary comes from the data its config records, so histories and results are the data's own item tokens.
A history is a list of item tokens, oldest first. Unknown items are ignored (and listed), a history longer than
the model's ``max_len`` keeps its most recent items, and with ``exclude_seen`` the history's items are never
recommended again. Positions carry the data's most common event type and an unknown time gap: the model is asked
"what comes next after these items". A query-aware model (``query-sasrec``, ``--task search``) also takes the
search's words (``query``): it ranks the results of that search for this history; words the data never had are
ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fedseqrec.data.dataset import Dataset
from fedseqrec.data.sequences import ad_event_ids
from fedseqrec.errors import UserError
from fedseqrec.federated.task import cached_dataset
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.batching import asking, history_batch
from fedseqrec.models.checkpoint import load_checkpoint
from fedseqrec.models.device import device_name, device_of, scores_on_cpu
from fedseqrec.models.quantization import int8_for_serving, is_int8
from fedseqrec.results.folder import recorded_data

MODEL_INFO = "model_info.json"  # which round's weights model.pt holds (a federation writes it beside them)


SCORED_TOGETHER = 32  # histories a group of similar length holds (see Recommender._ranked)


Parsed = tuple[np.ndarray, list[str], int]  # a history's known item ids, its unknown items, how many were cut


class Ranked(NamedTuple):
    """A history's scores with the excluded items at -inf, its top items and their scores (lists, read once), and
    how many of those top items it may recommend (those with a finite score: fewer than the top only when fewer
    items are left)."""

    scores: torch.Tensor
    items: list[int]
    values: list[float]
    left: int


@dataclass
class Recommendation:
    items: list[str]
    scores: list[float]
    unknown: list[str] = field(default_factory=list)  # history items the model does not know (ignored)
    truncated: int = 0  # oldest history items dropped to fit the model's length
    explanations: list[list[dict]] | None = None  # per item: the history items that contributed most

    def to_dict(self) -> dict:
        found = {
            "items": [{"item": i, "score": round(s, 6)} for i, s in zip(self.items, self.scores, strict=True)],
            "unknown_items": self.unknown,
            "truncated": self.truncated,
        }
        if self.explanations is not None:
            for entry, why in zip(found["items"], self.explanations, strict=True):
                entry["because"] = why
        return found


class Recommender:
    """A trained model with its item vocabulary; one object per set of weights (see :func:`load_recommender`)."""

    def __init__(self, folder: Path, model: SequentialRecommender, ds: Dataset, weights: str, digest: str):
        self.folder, self.model, self.ds, self.weights, self.digest = folder, model, ds, weights, digest
        self.model.eval()
        vocab = ds.sequences.vocab
        self.tokens = np.asarray([str(t) for t in vocab.items], dtype=object)
        self.index = {t: i for i, t in enumerate(self.tokens) if i > 0}
        events = [str(e) for e in vocab.events]
        common = np.bincount(ds.sequences.events, minlength=len(events)) if len(ds.sequences.events) else None
        self.event = int(np.argmax(common[1:]) + 1) if common is not None and len(common) > 1 else 1
        self.users = {str(u): i for i, u in enumerate(vocab.users) if i > 0}
        self.description = self._describe()  # read once: a service answers with it on every request

    @property
    def n_items(self) -> int:
        return len(self.tokens) - 1

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_len

    def history_of(self, user: str) -> list[str]:
        """A known user's items in the data the model was trained on, oldest first (behaviour only: the ads the
        user was shown are not part of what they did)."""
        if user not in self.users:
            raise UserError(f"user {user!r} is not in the data the model was trained on")
        row = self.users[user]
        data = self.ds.sequences
        own = slice(data.offsets[row], data.offsets[row + 1])
        shown = np.isin(data.events[own], ad_event_ids(data))
        return [str(self.tokens[i]) for i in data.items[own][~shown]]

    def recommend(
        self,
        history: list[str],
        k: int = 10,
        exclude_seen: bool = True,
        explain: bool = False,
        query: str | None = None,
    ) -> Recommendation:
        return self.recommend_batch([history], k, exclude_seen, explain, None if query is None else [query])[0]

    def recommend_batch(
        self,
        histories: list[list[str]],
        k: int = 10,
        exclude_seen: bool = True,
        explain: bool = False,
        queries: list[str | None] | None = None,
    ) -> list[Recommendation]:
        self._check_k(k)
        parsed = [self._ids(h) for h in histories]
        empty = [i for i, (ids, _, _) in enumerate(parsed) if not len(ids)]
        if empty:
            raise UserError(f"history {empty[0]} holds no item the model knows")
        words = self._words(queries, len(histories))
        results = []
        for row, ranked in enumerate(self._ranked(parsed, [(k, exclude_seen)] * len(parsed), words)):
            found = self._found(ranked, parsed[row], k)
            if explain:
                items = torch.tensor(ranked.items[: len(found.items)], dtype=torch.long)
                asked = None if words is None else words[row]
                found.explanations = self._explain(parsed[row][0], items, ranked.scores, asked)
            results.append(found)
        return results

    def recommend_each(self, requests: list[tuple[list[str], int, bool]]) -> list[Recommendation | UserError]:
        """Many single-history requests ``(history, k, exclude_seen)`` answered by one forward pass (what a service
        does with the requests that arrive together); a request that cannot be answered gets its error, the others
        their recommendations."""
        answers: list[Recommendation | UserError | None] = [None] * len(requests)
        parsed = {}
        for i, (history, k, _) in enumerate(requests):
            try:
                self._check_k(k)
                ids, unknown, truncated = self._ids(history)
                if not len(ids):
                    raise UserError("the history holds no item the model knows")
                parsed[i] = (ids, unknown, truncated)
            except UserError as err:
                answers[i] = err
        if parsed:
            histories = list(parsed.values())
            asked = [requests[i][1:] for i in parsed]
            ranked = self._ranked(histories, asked, None)
            for i, found, history, (k, _) in zip(parsed, ranked, histories, asked, strict=True):
                answers[i] = self._found(found, history, k)
        return answers

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.n_items:
            raise UserError(f"k must be between 1 and the {self.n_items} items of the catalogue, got {k}")

    def _ranked(self, parsed: list[Parsed], asked: list[tuple[int, bool]], words: np.ndarray | None) -> list[Ranked]:
        """Each history's ranking, in the order given. Histories are scored in groups of similar length, each padded
        only to its own longest: a batch of real histories (Amazon Beauty: 8.9 items on average, up to 50) padded to
        one width would spend most of the encoder's work on padding."""
        if len(parsed) <= SCORED_TOGETHER:
            return self._ranked_together(parsed, asked, words)
        order = np.argsort([len(ids) for ids, _, _ in parsed], kind="stable")
        ranked: list[Ranked] = [None] * len(parsed)  # type: ignore[list-item]
        for group in np.array_split(order, max(1, len(order) // SCORED_TOGETHER)):
            chosen = [parsed[i] for i in group]
            found = self._ranked_together(chosen, [asked[i] for i in group], None if words is None else words[group])
            for row, ranking in zip(group, found, strict=True):
                ranked[row] = ranking
        return ranked

    def _ranked_together(
        self, parsed: list[Parsed], asked: list[tuple[int, bool]], words: np.ndarray | None
    ) -> list[Ranked]:
        """One forward pass: every row's scores with its seen items at -inf where its request excludes them (a seen
        item is not one to recommend), and its top ``k`` for the largest ``k`` asked: one ``topk`` for the rows."""
        with torch.no_grad():
            scores = scores_on_cpu(self.model, self._batch([ids for ids, _, _ in parsed], words))
        seen = [np.unique(ids) for (ids, _, _), (_, exclude) in zip(parsed, asked, strict=True) if exclude]
        if seen:
            rows = [row for row, (_, exclude) in enumerate(asked) if exclude]
            at = torch.from_numpy(np.repeat(rows, [len(s) for s in seen]))
            scores[at, torch.from_numpy(np.concatenate(seen))] = -math.inf
        top = torch.topk(scores, max(k for k, _ in asked), dim=1)
        # Counted among the top alone: it holds every finite score when fewer than k are left, and a pass over every
        # score (a bool and an int64 copy of them) cost 4–9 % of a call on Beauty SASRec.
        left = (top.values > -math.inf).sum(1).tolist()
        rows = zip(scores.unbind(0), top.indices.tolist(), top.values.tolist(), left, strict=True)
        return [Ranked(*row) for row in rows]

    def _found(self, ranked: Ranked, parsed: Parsed, k: int) -> Recommendation:
        """A row's top ``k``: never more than the items left to recommend (those with a finite score)."""
        _, unknown, truncated = parsed
        keep = min(k, ranked.left)
        items, values = ranked.items[:keep], ranked.values[:keep]
        return Recommendation([str(self.tokens[i]) for i in items], values, unknown, truncated)

    def score_ads(self, history: list[str], ads: list[str]) -> dict:
        """An ad model's (``--task ctr``) click and purchase probabilities for ``ads`` shown after ``history``."""
        if not hasattr(self.model, "predict_ads"):
            raise UserError(f"{self.model.name} ranks items; --ads needs an ad model (din-esmm or lr, --task ctr)")
        ids, unknown, truncated = self._ids(history)
        if not len(ids):
            raise UserError("the history holds no item the model knows")
        known = [a for a in ads if str(a) in self.index]
        if not known:
            raise UserError(f"none of the ads {ads} is an item the model knows")
        with torch.no_grad():
            device = device_of(self.model)
            batch = history_batch([ids], self.event).to(device)
            asked = torch.tensor([[self.index[str(a)] for a in known]], device=device)
            p_click, p_purchase = (p.float().cpu() for p in self.model.predict_ads(batch, asked))
        scored = [
            {"item": str(a), "p_click": round(float(c), 6), "p_purchase": round(float(b), 6)}
            for a, c, b in zip(known, p_click[0], p_purchase[0], strict=True)
        ]
        return {
            "ads": scored,
            "unknown_ads": [str(a) for a in ads if str(a) not in self.index],
            "unknown_items": unknown,
            "truncated": truncated,
        }

    def _words(self, queries: list[str | None] | None, n: int) -> np.ndarray | None:
        """Each request's query as token ids (None: no request has one)."""
        if queries is None or all(q is None for q in queries):
            return None
        if not getattr(self.model, "reads_queries", False):
            raise UserError(
                f"{self.model.name} does not read search queries: a query needs a query-aware model "
                "(query-sasrec, trained with --task search)"
            )
        tokens = self.ds.sequences.tokens
        return np.stack([tokens.encode(q) if q is not None else np.zeros_like(tokens.encode("")) for q in queries])

    def _batch(self, histories: list[np.ndarray], words: np.ndarray | None):
        batch = history_batch(histories, self.event)
        return batch if words is None else asking(batch, words)

    def _ids(self, history: list[str]) -> Parsed:
        ids, unknown = [], []
        for token in history:
            item = self.index.get(str(token))
            (ids.append(item) if item is not None else unknown.append(str(token)))
        dropped = max(0, len(ids) - self.max_len)
        return np.asarray(ids[dropped:], dtype=np.int64), unknown, dropped

    def _explain(
        self, ids: np.ndarray, items: torch.Tensor, scores: torch.Tensor, words: np.ndarray | None, top: int = 3
    ) -> list[list[dict]]:
        """Leave-one-out: how much each recommended item's score drops when one history item is left out; only the
        items whose removal lowers it (none may: the list is then empty)."""
        if len(ids) < 2:
            return [[{"item": str(self.tokens[ids[0]]), "score_drop": None}] for _ in items] if len(ids) else []
        without = [np.delete(ids, position) for position in range(len(ids))]
        asked = None if words is None else np.repeat(words[None], len(without), axis=0)
        with torch.no_grad():
            reduced = scores_on_cpu(self.model, self._batch(without, asked))[:, items]  # (L, k)
        drops = (scores[items].unsqueeze(0) - reduced).numpy()
        explained = []
        for column in range(len(items)):
            order = [p for p in np.argsort(-drops[:, column])[:top] if drops[p, column] > 0]
            explained.append(
                [
                    {
                        "item": str(self.tokens[ids[p]]),
                        "position": int(p),
                        "score_drop": round(float(drops[p, column]), 6),
                    }
                    for p in order
                ]
            )
        return explained

    def describe(self) -> dict:
        """Which weights answer, from which round, and the privacy they carry."""
        return dict(self.description)

    def _describe(self) -> dict:
        info = _read(self.folder / MODEL_INFO) or {}
        same = info.get("sha256") == self.digest
        privacy = _read(self.folder / "privacy_report.json")
        return {
            "folder": self.folder.resolve().name,  # (no path of the server's disk in a response)
            "model": self.model.name,
            "weights": self.weights,
            "sha256": self.digest,
            "device": device_name(device_of(self.model)),
            "int8": is_int8(self.model),
            "round": info.get("round") if same else None,
            # the validation figure that chose these weights, under the task's metric (valid_NDCG@10, valid_AUC)
            **{key: value if same else None for key, value in info.items() if key.startswith("valid_")},
            "items": self.n_items,
            "max_len": self.max_len,
            "privacy": None
            if privacy is None
            else {
                "max_epsilon": privacy.get("max_epsilon"),
                "delta": privacy.get("delta"),
                "mechanism": privacy.get("mechanism"),
                "report": "privacy_report.json",
            },
        }


def load_recommender(
    path: str | Path, weights: str = "model.pt", data: str | None = None, device: str = "cpu", int8: bool = False
) -> Recommender:
    """The model a run folder holds, ready to recommend (``weights``: ``model.pt``, the released weights;
    ``model_last.pt``; ``data``: where the run's data is now, ``--data``; ``device``: where it scores; ``int8``:
    its linear and recurrent layers with int8 weights, on the CPU)."""
    folder = Path(path)
    if not (folder / weights).is_file() or not (folder / "model.json").is_file():
        raise UserError(
            f"{folder}: holds no trained model ({weights} and model.json); give the folder that "
            "`fedseqrec train` or `simulate` wrote"
        )
    ds = cached_dataset(recorded_data(folder, data))
    raw = (folder / weights).read_bytes()  # once: the digest names exactly the weights loaded
    # (checks model.json against the vocabulary)
    _, model = load_checkpoint(folder, ds.sequences, weights, device=device)
    try:
        model.load_state_dict(torch.load(io.BytesIO(raw), map_location=device_of(model), weights_only=True))
    except (RuntimeError, ValueError, EOFError) as err:
        raise UserError(f"{folder / weights}: unreadable weights ({err})") from err
    if int8:
        model = int8_for_serving(model)
    return Recommender(folder, model, ds, weights, hashlib.sha256(raw).hexdigest())


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
