"""Markdown tables from ablation.py's results.jsonl: mean ± std over seeds per (model, n, config).

    python benchmarks/quality/report.py benchmarks/quality/results.jsonl [--verdicts]

Columns: held-out ROUGE-L and CER after training (mean ± sample std over seeds), their change vs
the base model (same greedy baseline for every cell), held-out loss after, optimizer updates, wall.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ORDER = {"legacy": 0, "recommended": 1, "alternative": 2, "recommended_hlr": 3, "recommended_flat": 4,
         "router_focused": 5}


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def load(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def groups(records: list[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        grouped[(r["model"], r["weights"], r["n"], r["config"])].append(r)
    return grouped


def table(records: list[dict]) -> str:
    lines = []
    grouped = groups(records)
    for model, weights in sorted({(k[0], k[1]) for k in grouped}):
        base = next(r["before"] for r in records if r["model"] == model and r["weights"] == weights)
        ev = next(r["num_eval_samples"] for r in records if r["model"] == model)
        lines += [f"\n**{model}** (weights: `{weights}`; {ev} held-out docs; base model: ROUGE-L "
                  f"{base['rougeL']:.3f}, CER {base['cer']:.3f}, loss {base['loss']:.3f})\n",
                  "| n | config | preset (r) | updates | seeds | ROUGE-L after | Δ ROUGE-L | CER after | Δ CER "
                  "| held-out loss after | wall s/cell |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        keys = sorted((k for k in grouped if k[0] == model and k[1] == weights), key=lambda k: (k[2], ORDER[k[3]]))
        for key in keys:
            rs = grouped[key]
            r0 = rs[0]
            lines.append(
                f"| {key[2]} | {key[3]} | {r0['preset']} ({r0['lora']['rank']}) | {r0['optimizer_updates']} | "
                f"{len(rs)} | {fmt([r['after']['rougeL'] for r in rs])} | "
                f"{fmt([r['after']['rougeL'] - r['before']['rougeL'] for r in rs])} | "
                f"{fmt([r['after']['cer'] for r in rs])} | {fmt([r['after']['cer'] - r['before']['cer'] for r in rs])} | "
                f"{fmt([r['after']['loss'] for r in rs])} | {statistics.fmean(r['wall_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def compare(records: list[dict], model: str, n: int, a: str, b: str, metric: str) -> str:
    """'b better/worse/overlap than a' on ``metric`` (higher is better for rougeL, lower for cer/loss)."""
    grouped = groups(records)
    ra = [r for k, v in grouped.items() if k[0] == model and k[2] == n and k[3] == a for r in v]
    rb = [r for k, v in grouped.items() if k[0] == model and k[2] == n and k[3] == b for r in v]
    if not ra or not rb:
        return "not measured"
    va, vb = [r["after"][metric] for r in ra], [r["after"][metric] for r in rb]
    (ma, sa), (mb, sb) = mean_std(va), mean_std(vb)
    sign = 1 if metric == "rougeL" else -1
    better = sign * (mb - ma)
    overlap = abs(mb - ma) <= sa + sb
    if min(len(va), len(vb)) < 2:
        word = "1 seed: inconclusive"
    else:
        word = "overlap: inconclusive" if overlap else ("better" if better > 0 else "worse")
    return f"{b} {mb:.3f}±{sb:.3f} vs {a} {ma:.3f}±{sa:.3f} ({word}, {len(rb)}/{len(ra)} seeds)"


def verdict_lines(records: list[dict]) -> str:
    lines = []
    for model in sorted({r["model"] for r in records}):
        for n in sorted({r["n"] for r in records if r["model"] == model}):
            for metric in ("rougeL", "cer", "loss"):
                lines.append(f"- {model} n={n} {metric}: b vs a: {compare(records, model, n, 'legacy', 'recommended', metric)}; "
                             f"c vs b: {compare(records, model, n, 'recommended', 'alternative', metric)}; "
                             f"hlr vs b: {compare(records, model, n, 'recommended', 'recommended_hlr', metric)}; "
                             f"flat vs b: {compare(records, model, n, 'recommended', 'recommended_flat', metric)}; "
                             f"router vs b: {compare(records, model, n, 'recommended', 'router_focused', metric)}")
    return "\n".join(lines)


if __name__ == "__main__":
    records = load(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/quality/results.jsonl")
    print(table(records))
    if "--verdicts" in sys.argv:
        print()
        print(verdict_lines(records))
