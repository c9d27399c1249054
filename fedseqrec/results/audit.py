"""The privacy audit of a finished run folder: the empirical ε lower bound from its canaries, beside the ε claimed,
and the membership-inference attack on its audited real users.

A run trained with ``--audit-canaries`` / ``--audit-users`` sealed its coins in ``audit_coins.json`` before training
(``fedseqrec.data.canaries.seal``); :func:`audit_folder` reads them only now, scores every canary and audited user
under the trained model (``model.pt``, the model the run reports), and writes ``audit.json`` and ``audit.png``;
a private run's privacy report gains the audit. A lower bound above the claimed ε is a bug in a mechanism, never a
figure to print as if nothing happened: it is flagged (stderr, ``consistent: false``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from fedseqrec.data.canaries import SEALED
from fedseqrec.data.dataset import Dataset
from fedseqrec.errors import UserError
from fedseqrec.evaluation.binary import auc, tpr_at_fpr
from fedseqrec.evaluation.membership import sequence_scores
from fedseqrec.federated.task import cached_dataset
from fedseqrec.jsonio import dumps
from fedseqrec.models.checkpoint import load_checkpoint
from fedseqrec.privacy.audit import audit
from fedseqrec.privacy.config import default_delta
from fedseqrec.results.folder import recorded_data
from fedseqrec.results.privacy_report import pyplot, write_privacy_report

CONFIDENCE = 0.95
FPRS = (0.01, 0.001)


def audit_folder(folder: Path, data: str | None = None, device: str = "auto") -> dict:
    """``data``: ``--data``, where the run's data is now (checked against what the run recorded)."""
    folder, started = Path(folder), time.perf_counter()
    data = recorded_data(folder, data)
    if not data.audited:
        raise UserError(f"{folder}: the run has no canaries to audit (train it with --audit-canaries N)")
    if not (folder / SEALED).is_file():
        raise UserError(f"{folder / SEALED}: missing; the audit needs the coins sealed when the run started")
    if not (folder / "model.pt").is_file():
        raise UserError(f"{folder}: no model.pt (the run did not finish): nothing to audit")
    plan = json.loads((folder / SEALED).read_text())
    ds = cached_dataset(data)
    _, model = load_checkpoint(folder, ds.sequences, device=device)
    claimed = _claimed(folder, ds)
    result = {"claimed": claimed, "confidence": CONFIDENCE, "method": METHOD}
    canaries, users = plan["canaries"], plan["users"]
    event = _event_id(ds, plan["event"])
    index = {str(t): i for i, t in enumerate(ds.sequences.vocab.items)}  # item token → id, built once
    if canaries:
        ids = [_item_ids(index, c["items"]) for c in canaries]
        scores = sequence_scores(model, ids, event)
        coins = np.array([c["included"] for c in canaries])
        result["canaries"] = _separation(scores, coins, claimed["delta"])
    if users:
        ids = [_item_ids(index, u["items"]) for u in users]
        stamps = [np.asarray(u["timestamps"], dtype=np.float64)[i >= 0] for u, i in zip(users, ids, strict=True)]
        scores = sequence_scores(model, [i[i >= 0] for i in ids], event, stamps)
        coins = np.array([u["included"] for u in users])
        result["real_users"] = _separation(scores, coins, claimed["delta"])
    bound = max(result.get(k, {}).get("epsilon_lower_bound", 0.0) for k in ("canaries", "real_users"))
    result["epsilon_lower_bound"] = bound
    result["consistent"] = None if claimed["epsilon"] is None else bool(bound <= claimed["epsilon"] + 1e-9)
    result["seconds"] = round(time.perf_counter() - started, 2)  # the audit's own cost, after training
    (folder / "audit.json").write_text(dumps(result, indent=2) + "\n")
    _plot(result, folder / "audit.png")
    if (folder / "privacy.json").exists():
        write_privacy_report(folder)  # (it reads audit.json)
    return result


METHOD = (
    "one-run audit (Steinke, Nasr, Jagielski 2023): each canary / audited user trained on by a fair coin; score: "
    "the model's mean log-likelihood of its items given the ones before; guesses: the top and bottom k scores (a "
    "grid of k, Bonferroni-corrected); the bound is the largest ε the guesses reject at the confidence given"
)


def _separation(scores: np.ndarray, coins: np.ndarray, delta: float) -> dict:
    found = audit(scores, coins, delta, CONFIDENCE)
    return {
        **found.to_dict(),
        "members": int(coins.sum()),
        "non_members": int((~coins).sum()),
        "auc": auc(scores, coins),
        **{f"tpr_at_fpr_{fpr:g}": tpr_at_fpr(scores, coins, fpr) for fpr in FPRS},
        "scores": {"members": scores[coins].round(5).tolist(), "non_members": scores[~coins].round(5).tolist()},
    }


def audit_lines(found: dict) -> tuple[list[str], str | None]:
    """What an audit found, in two lines, and the flag when its bound exceeds the claimed ε (None: consistent)."""
    claimed = found["claimed"]["epsilon"]
    parts = []
    for part, words in (("canaries", "canaries"), ("real_users", "real users")):
        if part in found:
            f = found[part]
            parts.append(
                f"{words}: {f['correct']}/{f['guesses']} guesses right, ε ≥ {f['epsilon_lower_bound']:.3f}, "
                f"attack AUC {f['auc']:.3f}, TPR at 1% FPR {f['tpr_at_fpr_0.01']:.3f}"
            )
    claim = f"{claimed:.3f}" if claimed is not None else "none (no DP)"
    lines = [
        f"privacy audit ({found['confidence']:.0%} confidence): " + "; ".join(parts),
        f"empirical ε ≥ {found['epsilon_lower_bound']:.3f}; claimed ε {claim}",
    ]
    flag = None
    if found["consistent"] is False:
        flag = "the empirical lower bound exceeds the claimed ε: a mechanism does not do what it is accounted for"
    return lines, flag


def _claimed(folder: Path, ds: Dataset) -> dict:
    """The ε the run claims (None without DP) and its δ (without DP: the δ our runs default to for its users)."""
    path = folder / "privacy_report.json"
    if path.is_file():
        report = json.loads(path.read_text())
        return {"epsilon": report["max_epsilon"], "delta": report["delta"], "mechanism": report["mechanism"]}
    return {"epsilon": None, "delta": default_delta(ds.sequences.n_users), "mechanism": "none (no DP)"}


def _item_ids(index: dict[str, int], tokens: list[str]) -> np.ndarray:
    """Item ids of the vocabulary (−1: an item the trained data no longer holds)."""
    return np.array([index.get(str(t), -1) for t in tokens], dtype=np.int64)


def _event_id(ds: Dataset, token: str) -> int:
    events = [str(e) for e in ds.sequences.vocab.events]
    return events.index(token) if token in events else 1


def _plot(result: dict, path: Path) -> None:
    plt = pyplot()
    parts = [k for k in ("canaries", "real_users") if k in result]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 3.6), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        found = result[part]
        every = [v for values in found["scores"].values() for v in values if np.isfinite(v)]
        bins = np.linspace(min(every), max(every), 31) if every else 30  # the same bins for both
        for label, values in found["scores"].items():
            ax.hist(values, bins=bins, alpha=0.6, label=f"{label.replace('_', '-')} ({len(values)})")
        ax.set_title(f"{part.replace('_', ' ')}: AUC {found['auc']:.3f}, ε ≥ {found['epsilon_lower_bound']:.2f}")
        ax.set_xlabel("mean log-likelihood of its items")
        ax.legend()
    claimed = result["claimed"]["epsilon"]
    fig.suptitle(
        f"audit at {result['confidence']:.0%} confidence; claimed ε: "
        + (f"{claimed:.2f}" if claimed is not None else "none (no DP)")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
