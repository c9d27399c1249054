"""What a run prints and writes for people: the progress line of a round, the rounds table, ``summary.md``."""

from __future__ import annotations


def _shown(rounds: list[dict]) -> tuple[str, str]:
    """The two validation figures of the rounds table: ranking (NDCG@10, HR@10) or ads (click AUC, GAUC)."""
    ads = any("AUC" in (r.get("valid") or {}) for r in rounds)
    return ("CTR-AUC", "CTR-GAUC") if ads else ("NDCG@10", "HR@10")


def format_round(record: dict, rounds: int) -> str:
    """One progress line: round, clients, loss, two validation figures (NDCG@10 and HR@10, or click AUC and
    GAUC), seconds."""
    valid = record.get("valid") or {}
    parts = [f"round {record['round']:>3}/{rounds}", f"clients {record['clients']:>3}"]
    parts.append("loss      -" if record.get("loss") is None else f"loss {record['loss']:6.3f}")
    first, second = _shown([record])
    if first in valid:
        parts += [f"{first} {valid[first]:.4f}", f"{second} {valid[second]:.4f}"]
    if "epsilon_max" in record:
        parts.append(f"ε {record['epsilon_max']:.3f}")
    parts.append(f"{record['seconds']:6.1f} s")
    if record.get("failed"):
        parts.append(f"failed: {', '.join(record['failed'])}")
    return "  ".join(parts)


def summary_table(rounds: list[dict]) -> str:
    private = any("epsilon_max" in r for r in rounds)
    first, second = _shown(rounds)
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


def summary_markdown(results: dict, rounds: list[dict]) -> str:
    test, valid = results["test"], results["valid"]
    if "AUC" in test:  # --task ctr
        return (
            f"# Federated run: {results['model']} with {results['strategy']} ({results['partition']} partition)\n\n"
            f"- rounds: {results['rounds_run']}; best round (validation click AUC): {results['best_round']}\n"
            f"- test at the best round: {_listed(test)}\n- validation at the best round: {_listed(valid)}\n"
            + (f"- largest client ε: {results['privacy']['max_epsilon']:.3f}\n" if results.get("privacy") else "")
            + f"\n{summary_table(rounds)}\n"
        )
    return (
        f"# Federated run: {results['model']} with {results['strategy']} ({results['partition']} partition)\n\n"
        f"- rounds: {results['rounds_run']}; best round (validation NDCG@10): {results['best_round']}\n"
        f"- test at the best round: NDCG@10 {test.get('NDCG@10', float('nan')):.4f}, "
        f"HR@10 {test.get('HR@10', float('nan')):.4f}, MRR@10 {test.get('MRR@10', float('nan')):.4f}\n"
        f"- validation at the best round: NDCG@10 {valid.get('NDCG@10', float('nan')):.4f}\n"
        f"- test after the last round: NDCG@10 {results['last']['test'].get('NDCG@10', float('nan')):.4f}\n"
        f"- evaluation: {results['evaluation']} ({results['protocol']} ranking); {results['seconds']:.1f} s\n"
        + (f"- stopped: {results['stopped']}\n" if results.get("stopped") else "")
        + (
            f"- largest client ε: {results['privacy']['max_epsilon']:.3f} (see privacy_report.md)\n"
            if results.get("privacy")
            else ""
        )
        + (
            f"- popularity baseline: test NDCG@10 {results['popularity']['test']['NDCG@10']:.4f}\n"
            if results.get("popularity")
            else ""
        )
        + "".join(f"- **{note}**\n" for note in results.get("notes", []))
        + "\n"
        f"{summary_table(rounds)}\n"
    )


def _listed(metrics: dict) -> str:
    names = ("CTR-AUC", "CTR-GAUC", "CTR-LogLoss", "CVR-AUC", "CVR-LogLoss", "CVR-calibration")
    return ", ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)
