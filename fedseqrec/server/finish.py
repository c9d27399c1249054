"""The end of a federated run: the best and last global models evaluated, set beside the initial model (a
mechanism may have trained it on public users), the popularity baseline and the poisoning figures; then
``metrics.json``, the privacy report and ``summary.md`` written. The round loop (``loop.py``) hands over what its
rounds left behind (:class:`RunEnd`) and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord

from fedseqrec.data.dataset import Dataset
from fedseqrec.data.tasks import Task
from fedseqrec.evaluation.evaluator import poisoning_figures, popularity_baseline
from fedseqrec.evaluation.metrics import catalogue_note
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.privacy.config import BEST_VALIDATION
from fedseqrec.privacy.mechanism import PrivacyMechanism
from fedseqrec.results.folder import RunFolder
from fedseqrec.results.privacy_report import write_privacy_report
from fedseqrec.results.summary import summary_markdown

INITIAL = "model_initial.pt"  # the initial global model a mechanism prepared (trained on public users)
Evaluate = Callable[[ArrayRecord, str, int], dict]


@dataclass(frozen=True)
class RunEnd:
    """What the rounds left behind."""

    rounds_run: int
    best_round: int  # its weights are the folder's model.pt
    last: ArrayRecord  # the global weights after the last round
    stopped: str | None  # why the run ended before its last round
    secure_aggregation: dict | None = None  # how SecAgg+ was set up, if it was


@dataclass
class Finaliser:
    cfg: RunConfig
    folder: RunFolder
    model: SequentialRecommender  # the global model's module (weights are loaded into it)
    ds: Dataset  # the server's data
    evaluate: Evaluate  # the run's evaluation (centralized or federated)
    mechanism: PrivacyMechanism
    task: Task
    say: Callable[[str], None]

    def finish(self, end: RunEnd) -> dict:
        best = ArrayRecord(torch.load(self.folder.path / "model.pt", weights_only=True))
        rounds = self.folder.rounds()
        cfg = self.cfg
        results = {
            "model": cfg.model.name,
            "task": cfg.data.task,
            "strategy": cfg.algorithm.strategy,
            "partition": cfg.data.partition,
            "evaluation": cfg.evaluation.mode,
            "protocol": cfg.evaluation.protocol,
            "rounds_run": end.rounds_run,
            "stopped": end.stopped,
            "best_round": end.best_round,  # the released model's round (model.pt), whatever the rule
            "release": self._release(end),
            "valid": self.evaluate(best, "valid", end.rounds_run),
            "test": self.evaluate(best, "test", end.rounds_run),
            "last": {
                "round": end.rounds_run,
                "valid": rounds[-1].get("valid") or self.evaluate(end.last, "valid", end.rounds_run),
                "test": self.evaluate(end.last, "test", end.rounds_run),
            },
            "params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "seconds": round(sum(r["seconds"] for r in rounds), 2),
        }
        results.update(self._initial_model())
        results.update(self._against_popularity(results))
        small = catalogue_note(self.ds.sequences.n_items) if self.task.ranks_items else None
        if small:
            results["notes"] = [*results.get("notes", []), small]
        if cfg.evaluation.mode != "federated":  # (the server holds real users' test targets)
            self.model.load_state_dict(best.to_torch_state_dict())
            results.update(
                poisoning_figures(self.model, self.ds.sequences, self.ds.split, self.ds.options, self.model.cfg.max_len)
            )
        if self.mechanism.private:
            results["privacy"] = self.mechanism.summary()
        if end.secure_aggregation is not None:
            results["secure_aggregation"] = end.secure_aggregation
        self.folder.write_json("metrics.json", results)
        if self.mechanism.private:
            write_privacy_report(self.folder.path)
        self.folder.write_text("summary.md", summary_markdown(results, rounds, self.task))
        return results

    def _release(self, end: RunEnd) -> dict:
        rule = self.cfg.privacy.released
        private_choice = rule == BEST_VALIDATION and self.mechanism.private
        return {
            "rule": rule,
            "round": end.best_round,
            "reads_validation": rule == BEST_VALIDATION,
            "covered_by_guarantee": not private_choice,
        }

    def _initial_model(self) -> dict:
        """The prepared initial model's figures (public users only), beside what the private rounds reached."""
        if not (self.folder.path / INITIAL).exists():
            return {}
        initial = ArrayRecord(torch.load(self.folder.path / INITIAL, weights_only=True))
        figures = {which: self.evaluate(initial, which, 0) for which in ("valid", "test")}
        chosen = self.task.selection
        self.say(f"initial model (before the private rounds): test {chosen} {figures['test'][chosen]:.4f}")
        return {"initial": figures}

    def _against_popularity(self, results: dict) -> dict:
        """The most-popular baseline on the same targets (when the server holds them), and a note when the model
        does not beat it: a private model below popularity is not worth its privacy cost."""
        if self.cfg.evaluation.mode == "federated" or not self.task.ranks_items:  # (ads: lr is the baseline)
            return {}
        pop = popularity_baseline(
            self.ds.sequences, self.ds.split, self.model.cfg.max_len, self.cfg.evaluation.protocol
        )
        chosen = self.task.selection
        ours, floor = results["test"].get(chosen, 0.0), pop["test"][chosen]
        if ours >= floor:
            return {"popularity": pop}
        note = f"below the popularity baseline: test {chosen} {ours:.4f} < {floor:.4f} (most popular items); " + (
            "at this privacy level recommend popular items instead" if self.mechanism.private else ""
        )
        return {"popularity": pop, "notes": [note.rstrip("; ")]}
