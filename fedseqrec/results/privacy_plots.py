"""The privacy report's figures: ε per round of every client (curves that coincide drawn once) and the task's
validation figure per round beside a reference run's."""

from __future__ import annotations

import math
from pathlib import Path


def fmt(value) -> str:
    """A figure as the report prints it: 4 significant digits, ∞, or - for none."""
    if value is None:
        return "-"
    return "∞" if isinstance(value, float) and math.isinf(value) else f"{value:.4g}"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _same_series(history: list[dict], clients: list[str]) -> list[tuple[list[str], list[float]]]:
    """Clients grouped by identical ε curves: curves that coincide are drawn (and listed) once."""
    groups: dict[tuple, list[str]] = {}
    for client in clients:
        groups.setdefault(tuple(h["epsilons"].get(client, 0.0) for h in history), []).append(client)
    return [(members, list(series)) for series, members in groups.items()]


def _clients_label(members: list[str], total: int) -> str:
    if len(members) == total:
        return f"every client ({total})"
    shown = ", ".join(members[:4]) + (f", … ({len(members)})" if len(members) > 4 else "")
    return f"client{'s' if len(members) > 1 else ''} {shown}"


def plot_epsilon(report: dict, path: Path) -> None:

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    history = report["history"]
    rounds = [h["round"] for h in history]
    clients = sorted({c for h in history for c in h["epsilons"]}, key=int)
    groups = _same_series(history, clients)
    if 1 < len(groups) <= 10:
        for members, series in groups:
            ax.plot(rounds, series, lw=0.9, alpha=0.7, label=_clients_label(members, len(clients)))
    largest = "largest ε" if len(groups) != 1 else _clients_label(groups[0][0], len(clients))
    ax.plot(rounds, [h["max_epsilon"] for h in history], color="black", lw=2, marker="o", ms=3, label=largest)
    if report["budget"]:
        ax.axhline(float(report["budget"]), color="red", ls="--", lw=1, label="budget")
    ax.set_ylim(bottom=0)
    _save(plt, fig, ax, f"ε (δ ≤ {fmt(report['delta'])})", "privacy spent per round", path)


def plot_utility(report: dict, path: Path, reference: list[dict] | None = None) -> None:
    """The task's validation figure per round from zero up, with the popularity baseline and a run without DP if
    given."""

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    utility = report["utility"]
    metric = report["metric"]
    values = [u[metric] for u in utility]
    ax.plot([u["round"] for u in utility], values, marker="o", ms=3, label="this run (private)")
    if reference:
        ax.plot([u["round"] for u in reference], [u[metric] for u in reference], color="grey", label="without DP")
        values += [u[metric] for u in reference]
    if report.get("popularity") is not None:
        ax.axhline(report["popularity"], color="orange", ls="--", lw=1, label="most popular items")
        values.append(report["popularity"])
    ax.set_ylim(0, max(values, default=0.0) * 1.15 or 1.0)  # from zero: noise must not look like a trend
    _save(plt, fig, ax, f"validation {metric}", "utility per round", path)


def _save(plt, fig, ax, ylabel: str, title: str, path: Path) -> None:
    """A per-round figure's axes, legend and file."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
