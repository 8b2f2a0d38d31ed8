"""Markdown tables from ablation.py's result files (JSONL), one table per model and run kind.

    python benchmarks/quality/report.py benchmarks/quality/results.jsonl [more.jsonl ...] [--verdicts]

Scaled runs (docs/quality.md, issue #8): held-out ROUGE-L and CER after training (mean ± sample std
over seeds), their change vs the base model (same greedy baseline for every cell), held-out loss
after, optimizer updates, wall.

Full-length runs (``ablation.py --full-length``, issue 17): mean and spread (min–max over seeds) of
held-out loss, ROUGE-L and CER after training, where training stopped (updates made of the planned
ones) and the update of the best held-out loss (the adapter that was kept and scored). ``--verdicts``
then compares pairs of configs: "better"/"worse" only when the seeds' ranges do not overlap.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ORDER = {"legacy": 0, "recommended": 1, "alternative": 2, "recommended_hlr": 3, "recommended_flat": 4,
         "router_focused": 5}
FAMILY = re.compile(r"^(lr|flat)_x(\d+(?:\.\d+)?)$")


def order(config: str) -> tuple:
    """Named configs first (fixed order), then lr_xK by K, then flat_xK by K."""
    family = FAMILY.match(config)
    if family:
        return (10 + (family.group(1) == "flat"), float(family.group(2)))
    return (ORDER.get(config, 9), 0.0)


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
        keys = sorted((k for k in grouped if k[0] == model and k[1] == weights), key=lambda k: (k[2], order(k[3])))
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


def span(values: list[float], digits: int = 3) -> str:
    """mean (min–max) of the seeds' values; one seed: the value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def ints(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return str(values[0]) if min(values) == max(values) else f"{min(values)}–{max(values)}"


def full_table(records: list[dict]) -> str:
    """Full-length tables: mean (min–max over seeds) per model × n × config."""
    lines = []
    grouped = groups(records)
    for model, weights in sorted({(k[0], k[1]) for k in grouped}):
        mine = [r for r in records if r["model"] == model and r["weights"] == weights]
        base = mine[0]["before"]
        lines += [f"\n**{model}**, full length (weights: `{weights}`; {mine[0]['num_eval_samples']} held-out docs, "
                  f"{mine[0]['max_new_tokens']} new tokens; base model: held-out loss {base['loss']:.3f}, ROUGE-L "
                  f"{base['rougeL']:.3f}, CER {base['cer']:.3f})\n",
                  "| n | config | preset (r) | lr | schedule | seeds | updates made / planned | best eval @ update "
                  "| held-out loss after | ROUGE-L after | CER after | wall s/cell |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        keys = sorted((k for k in grouped if k[0] == model and k[1] == weights), key=lambda k: (k[2], order(k[3])))
        for key in keys:
            rs = sorted(grouped[key], key=lambda r: r["seed"])
            r0, sched = rs[0], rs[0]["schedule"]
            schedule = "constant" if sched["scheduler_type"] == "none" else sched["scheduler_type"]
            if sched.get("warmup_ratio") or sched.get("warmup_steps"):
                schedule += f" + warmup {rs[0]['warmup_steps']}"
            lines.append(
                f"| {key[2]} | {key[3]} | {r0['preset']} ({r0['lora']['rank']}) | {sched['learning_rate']:.1e} | "
                f"{schedule} | {len(rs)} | {ints([r['optimizer_updates'] for r in rs])} / "
                f"{ints([r.get('planned_updates') for r in rs])} | {ints([r.get('best_eval_step') for r in rs])} | "
                f"{span([r['after']['loss'] for r in rs])} | {span([r['after']['rougeL'] for r in rs])} | "
                f"{span([r['after']['cer'] for r in rs])} | {statistics.fmean(r['wall_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def full_compare(records: list[dict], model: str, n: int, a: str, b: str, metric: str) -> str | None:
    """'b vs a' on ``metric``: better/worse only if the seeds' min–max ranges do not overlap."""
    va = [r["after"][metric] for r in records if r["model"] == model and r["n"] == n and r["config"] == a]
    vb = [r["after"][metric] for r in records if r["model"] == model and r["n"] == n and r["config"] == b]
    if not va or not vb:
        return None
    sign = 1 if metric == "rougeL" else -1  # higher ROUGE-L is better; lower loss and CER
    ga, gb = [sign * v for v in va], [sign * v for v in vb]  # "goodness": higher is better
    if min(len(va), len(vb)) < 2:
        word = "1 seed: inconclusive"
    elif min(gb) > max(ga):
        word = "better"
    elif max(gb) < min(ga):
        word = "worse"
    else:
        word = "ranges overlap: inconclusive"
    return f"{b} {statistics.fmean(vb):.3f} vs {a} {statistics.fmean(va):.3f} ({word}, {len(vb)}/{len(va)} seeds)"


def full_pairs(configs: set[str]) -> list[tuple[str, str]]:
    """recommended vs legacy; each lr_xK vs recommended; each flat_xK vs lr_xK (x1: recommended)."""
    pairs = [("legacy", "recommended")]
    for c in sorted(configs, key=order):
        family = FAMILY.match(c)
        if family and family.group(1) == "lr":
            pairs.append(("recommended", c))
        elif family:
            k = family.group(2)
            pairs.append(("recommended" if float(k) == 1 else f"lr_x{k}", c))
    return pairs


def full_verdict_lines(records: list[dict]) -> str:
    lines = []
    for model in sorted({r["model"] for r in records}):
        mine = [r for r in records if r["model"] == model]
        for n in sorted({r["n"] for r in mine}):
            configs = {r["config"] for r in mine if r["n"] == n}
            for a, b in full_pairs(configs):
                found = [full_compare(mine, model, n, a, b, m) for m in ("loss", "rougeL", "cer")]
                if all(found):
                    lines.append(f"- {model} n={n}: loss {found[0]}; ROUGE-L {found[1]}; CER {found[2]}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    paths = [a for a in argv if not a.startswith("--")] or ["benchmarks/quality/results.jsonl"]
    records = [r for path in paths for r in load(path)]
    full = [r for r in records if r.get("full_length")]
    scaled = [r for r in records if not r.get("full_length")]
    if scaled:
        print(table(scaled))
        if "--verdicts" in argv:
            print()
            print(verdict_lines(scaled))
    # One table per evaluation setup: cells scored on other documents or lengths are not comparable.
    setups: dict[tuple, list[dict]] = defaultdict(list)
    for r in full:
        setups[(r["num_eval_samples"], r["max_new_tokens"], r.get("smoke", False))].append(r)
    for (_, _, smoke), rs in sorted(setups.items(), key=lambda item: item[0][2]):
        print(full_table(rs) + ("\n(smoke run: truncated recipes)" if smoke else ""))
        if "--verdicts" in argv:
            print()
            print(full_verdict_lines(rs))


if __name__ == "__main__":
    main(sys.argv[1:])
