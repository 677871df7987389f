"""Render the ranker benchmark JSON as the markdown tables in bench/RANKER.md.

    .venv/bin/python bench/ranker_report.py            # prints the tables
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def accuracy_table(report: dict) -> str:
    rows = [
        "| generating model | n held out | ranker tau | tau, batches of 32 | Spearman | prompt-length tau "
        "| constant (FCFS) tau | oracle tau | SJF mean latency vs FCFS (ranker / oracle) | p90 coverage |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    per_model = report["per_model"]
    for model in sorted(per_model, key=lambda m: -per_model[m]["kendall_tau"]["mean"]):
        r = per_model[model]
        rows.append(
            f"| {model} | {round(sum(r['n_heldout']) / len(r['n_heldout']))} "
            f"| **{r['kendall_tau']['mean']:.3f}** ± {r['kendall_tau']['std']:.3f} "
            f"| {r['kendall_tau_batch32']['mean']:.3f} | {r['spearman']['mean']:.3f} "
            f"| {r['prompt_length_tau']['mean']:+.3f} | 0 | 1 "
            f"| {r['sjf_ratio_vs_fcfs']['mean']:.3f} / {r['oracle_ratio_vs_fcfs']['mean']:.3f} "
            f"| {r['p90_coverage']['mean']:.2f} |"
        )
    return "\n".join(rows)


def ablation_table(report: dict) -> str:
    rows = ["| features / objective | Kendall tau (mean ± std over seeds) |", "| --- | --- |"]
    for name, r in sorted(report.get("ablation_llama3_8b", {}).items(), key=lambda kv: -kv[1]["mean"]):
        rows.append(f"| {name} | {r['mean']:.3f} ± {r['std']:.3f} |")
    return "\n".join(rows)


def main() -> None:
    report = json.loads((RESULTS / "ranker_accuracy.json").read_text())
    print(accuracy_table(report))
    print()
    print(ablation_table(report))


if __name__ == "__main__":
    main()
