"""What a model learns to predict — a task — as one object: its targets and split, what the shop generator plants
for it, the metric that picks the best epoch or round, the figures commands print, and whether the item-ranking
tools (popularity baseline, the audit's next-item likelihoods) apply. ``--task NAME`` picks one of
:data:`TASKS`; code asks the task, never tests its name or sniffs a metric's.

The metrics themselves are computed in :mod:`fedseqrec.evaluation`; a task only names the ones it reports.
"""

from __future__ import annotations

from dataclasses import dataclass

RANKING = ("NDCG@10", "HR@10", "MRR@10", "NDCG@20", "HR@20")
CLICKS = ("CTR-AUC", "CTR-GAUC", "CTR-LogLoss", "CVR-AUC", "CVR-LogLoss", "CVR-calibration")


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    selection: str  # the validation metric that picks the best epoch or round
    headline: tuple[str, ...]  # the test figures a command prints for a result
    table: tuple[str, ...]  # the figures of `evaluate`'s table and of summaries
    progress: tuple[str, str]  # the two validation figures of a progress line and of the rounds table
    targets: str  # what one test target is, in words
    ranks_items: bool  # ranking metrics: the popularity baseline and the audit's next-item likelihoods apply
    split: str | None  # leave-one-out over its own targets ("searches", "slates"), or None: --split
    plants_searches: bool = False  # the shop generator makes history-dependent searches
    plants_ads: bool = False  # the shop generator shows ads with clicks and purchases

    @property
    def own_split(self) -> bool:
        return self.split is not None

    def headline_of(self, metrics: dict) -> str:
        return "  ".join(f"{n} {metrics[n]:.4f}" for n in self.headline if n in metrics)

    def listed(self, metrics: dict, names: tuple[str, ...] | None = None) -> str:
        return ", ".join(f"{n} {metrics[n]:.4f}" for n in names or self.table if n in metrics)


NEXT_ITEM = Task(
    "next-item",
    "the next event's item (every model)",
    "NDCG@10",
    ("NDCG@10", "HR@10", "MRR@10"),
    RANKING,
    ("NDCG@10", "HR@10"),
    "targets",
    ranks_items=True,
    split=None,
)
SEARCH = Task(
    "search",
    "the item a search finds, from the history and the query (targets: the events with a query)",
    "NDCG@10",
    ("NDCG@10", "HR@10", "MRR@10"),
    RANKING,
    ("NDCG@10", "HR@10"),
    "searches",
    ranks_items=True,
    split="searches",
    plants_searches=True,
)
CTR = Task(
    "ctr",
    "whether a shown ad is clicked and then bought (targets: impression events)",
    "AUC",
    ("CTR-AUC", "CTR-GAUC", "CTR-LogLoss", "CVR-AUC", "CVR-calibration"),
    CLICKS,
    ("CTR-AUC", "CTR-GAUC"),
    "ad slates",
    ranks_items=False,
    split="slates",
    plants_ads=True,
)
TASKS = {task.name: task for task in (NEXT_ITEM, SEARCH, CTR)}


def task_of(name: str) -> Task:
    return TASKS[name]
