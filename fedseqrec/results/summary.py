"""What a run prints and writes for people: the progress line of a round, the rounds table, ``summary.md``; the
figures shown are the task's (:mod:`fedseqrec.data.tasks`)."""

from __future__ import annotations

from fedseqrec.data.tasks import Task


def format_round(record: dict, rounds: int, task: Task) -> str:
    """One progress line: round, clients, loss, the task's two validation figures, seconds."""
    valid = record.get("valid") or {}
    parts = [f"round {record['round']:>3}/{rounds}", f"clients {record['clients']:>3}"]
    parts.append("loss      -" if record.get("loss") is None else f"loss {record['loss']:6.3f}")
    first, second = task.progress
    if first in valid:
        parts += [f"{first} {valid[first]:.4f}", f"{second} {valid[second]:.4f}"]
    if "epsilon_max" in record:
        parts.append(f"ε {record['epsilon_max']:.3f}")
    parts.append(f"{record['seconds']:6.1f} s")
    if record.get("failed"):
        parts.append(f"failed: {', '.join(record['failed'])}")
    return "  ".join(parts)


def released_round(results: dict, chosen: str) -> str:
    """Which round's model the run released and why, in words (``released round 60 of 60, the last``)."""
    release = results.get("release") or {"rule": "best-validation"}  # (runs of 0.2 and before)
    done = f"round {results['best_round']} of {results['rounds_run']}"
    if release["rule"] == "last":
        return f"released {done}, the last (a choice that reads no user data)"
    return f"released {done}, the best on validation {chosen}"


def summary_table(rounds: list[dict], task: Task) -> str:
    private = any("epsilon_max" in r for r in rounds)
    first, second = task.progress
    header = f"| round | clients | loss | valid {first} | valid {second} |" + (" largest ε |" if private else "")
    lines = [header + " seconds |", "|---:" * (7 if private else 6) + "|"]
    for r in rounds:
        valid = r.get("valid") or {}
        ndcg = f"{valid[first]:.4f}" if first in valid else ""
        hr = f"{valid[second]:.4f}" if second in valid else ""
        loss = "" if r.get("loss") is None else f"{r['loss']:.4f}"
        eps = f" {r['epsilon_max']:.3f} |" if private else ""
        lines.append(f"| {r['round']} | {r['clients']} | {loss} | {ndcg} | {hr} |{eps} {r['seconds']:.1f} |")
    return "\n".join(lines)


def summary_markdown(results: dict, rounds: list[dict], task: Task) -> str:
    test, valid, chosen = results["test"], results["valid"], task.selection
    nan = float("nan")
    lines = [
        f"# Federated run: {results['model']} with {results['strategy']} ({results['partition']} partition)",
        "",
        f"- {released_round(results, chosen)}",
        f"- test of the released model: {task.listed(test, task.headline)}",
        f"- validation of the released model: {chosen} {valid.get(chosen, nan):.4f}",
        f"- test after the last round: {chosen} {results['last']['test'].get(chosen, nan):.4f}",
        f"- evaluation: {results['evaluation']} ({results['protocol']} protocol); {results['seconds']:.1f} s",
    ]
    if results.get("stopped"):
        lines.append(f"- stopped: {results['stopped']}")
    if results.get("privacy"):
        privacy = results["privacy"]
        whose = "ε of the release (one ledger for every user)" if "ledger" in privacy else "largest client ε"
        lines.append(f"- {whose}: {privacy['max_epsilon']:.3f} (see privacy_report.md)")
    if results.get("initial"):  # the public users' model, before the private rounds
        alone = results["initial"]["test"].get(chosen, nan)
        ours = test.get(chosen, nan)
        gain = f"{(ours / alone - 1) * 100:+.0f} %" if alone > 0 else "n/a"
        lines.append(f"- the public users' model alone: test {chosen} {alone:.4f}; the private rounds' gain: {gain}")
    if results.get("popularity"):
        lines.append(f"- popularity baseline: test {chosen} {results['popularity']['test'][chosen]:.4f}")
    lines += [f"- **{note}**" for note in results.get("notes", [])]
    return "\n".join(lines) + f"\n\n{summary_table(rounds, task)}\n"
