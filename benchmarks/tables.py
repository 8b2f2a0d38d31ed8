"""Markdown tables for docs/performance.md from the JSON files in benchmarks/results/.

    python benchmarks/tables.py benchmarks/results/trainer_embedded.json benchmarks/results/moe_large.json …
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _triple(d: dict | None, fmt: str) -> str:
    return " / ".join(format(d[k], fmt) for k in ("min", "median", "max")) if d else "–"


def trainer_table(data: dict) -> str:
    summary, settings = data["summary"], data["settings"]
    reference = settings["reference"]
    # Rounds completed (a comparison stopped early keeps the runs it finished).
    rounds = min(len(records) for records in data["runs"].values()) if data.get("runs") else settings["rounds"]
    lines = [
        f"`{data['command']}`",
        "",
        f"model {settings['model']}, preset {settings['preset']}, {settings['samples']} samples, batch "
        f"{settings['batch_size']}, accumulation {settings['grad_accum']}, {settings['epochs']} epochs, "
        f"{rounds} rounds, {settings['threads'] or 'default'} thread(s); load average at the end "
        f"{', '.join(f'{x:.1f}' for x in data['machine']['load_average'])}",
        "",
        f"| variant | tokens/s (wall) | tokens/CPU-s | ratio vs {reference} (wall) | ratio vs {reference} (CPU) "
        "| samples/s (wall, median) | in-loop logging + checkpoint s (median) | peak RSS MiB (median) | trainable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        io = s.get("log_seconds", {}).get("median", 0) + s.get("checkpoint_seconds", {}).get("median", 0)
        lines.append(
            f"| `{variant}` | {_triple(s['tokens_per_s'], '.0f')} | {_triple(s['tokens_per_cpu_s'], '.0f')} "
            f"| {_triple(s.get(f'tokens_per_s_ratio_vs_{reference}'), '.2f')} "
            f"| {_triple(s.get(f'tokens_per_cpu_s_ratio_vs_{reference}'), '.2f')} "
            f"| {s['samples_per_s']['median']:.2f} | {io:.2f} of {s['loop_seconds']['median']:.1f} "
            f"| {s['peak_rss_mib']['median']:.0f} | {s['trainable']:,} |")
    return "\n".join(lines)


def trainer_memory_table(data: dict) -> str:
    """Issue-15 columns: throughput with DeepSynth's feature-cache encoding counted, and peak memory ratios."""
    summary, reference = data["summary"], data["settings"]["reference"]
    lines = [
        f"| variant | tokens/s (wall, loop) | tokens/s incl. cache encoding | tokens/CPU-s incl. cache | ratio wall "
        f"(loop) | ratio wall incl. cache | ratio CPU incl. cache | peak RSS MiB (process) | ratio peak RSS "
        f"| loop peak RSS MiB | ratio loop peak RSS | RSS at loop start MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        ratio = lambda key, fmt=".2f": _triple(s.get(f"{key}_ratio_vs_{reference}"), fmt)  # noqa: E731
        lines.append(
            f"| `{variant}` | {_triple(s['tokens_per_s'], '.1f')} | {_triple(s['tokens_per_s_incl_cache'], '.1f')} "
            f"| {_triple(s['tokens_per_cpu_s_incl_cache'], '.1f')} | {ratio('tokens_per_s')} "
            f"| {ratio('tokens_per_s_incl_cache')} | {ratio('tokens_per_cpu_s_incl_cache')} "
            f"| {_triple(s['peak_rss_mib'], '.0f')} | {ratio('peak_rss_mib', '.3f')} "
            f"| {_triple(s.get('loop_peak_rss_mib'), '.0f')} | {ratio('loop_peak_rss_mib', '.3f')} "
            f"| {_triple(s.get('rss_at_loop_start_mib'), '.0f')} |")
    return "\n".join(lines)


def profile_tables(data: dict) -> str:
    """Top ops by self CPU time of one profiled update per variant (trainer_vs_baseline.py profile)."""
    parts = []
    for variant, record in data["profiles"].items():
        profile = record["profile"]
        parts += [f"{variant}: {profile['update_seconds']:.1f} s under the profiler, "
                  f"{profile['self_cpu_ms_total'] / 1000:.1f} CPU-s of ops", "",
                  "| op | calls | self CPU s | share |", "|---|---|---|---|"]
        parts += [f"| `{e['op']}` | {e['calls']} | {e['self_cpu_ms'] / 1000:.2f} | {e['self_cpu_share']:.1%} |"
                  for e in profile["top_by_self_cpu"]]
        parts.append("")
    return "\n".join(parts)


def moe_table(data: dict) -> str:
    lines = [
        f"`{data['command']}`" if data.get("command") else "",
        "",
        f"model {data['model']}, batch {data['batch_size']} ({data['tokens_per_batch']} tokens), "
        f"{data['rounds']} rounds, {data['machine']['threads']} thread(s) (min / median / max)",
        "",
        "| implementation | train step ms | train step CPU-ms | forward ms | 1-token forward ms | max abs Δlogits vs eager "
        "| max rel Δgrad vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for implementation, t in data["timings"].items():
        n = data["numerics_vs_eager"][implementation]
        ms = {k: {s: v * 1e3 for s, v in t[k].items() if s != "n"} for k in t}
        lines.append(
            f"| `{implementation}` | {_triple(ms['train_step_s'], '.0f')} | {_triple(ms.get('train_step_cpu_s'), '.0f')} "
            f"| {_triple(ms['forward_s'], '.0f')} | {_triple(ms['one_token_forward_s'], '.0f')} "
            f"| {n['max_abs_logits_diff']:.1e} | {n['max_rel_grad_diff']:.1e} |")
    return "\n".join(lines)


def fault_table(data: dict) -> str:
    """Kills tried / survived / lost per kill moment (benchmarks/fault_injection.py)."""
    lines = [f"launcher {data['launcher']}, {len(data['series'])} series, {data['seconds']} s",
             "", "| fault | tried | survived | lost | left a partial checkpoint |", "|---|---:|---:|---:|---:|"]
    for mode in sorted({kill["mode"] for kill in data["kills"]}):
        kills = [kill for kill in data["kills"] if kill["mode"] == mode]
        lines.append(f"| kill -9 ({mode}) | {len(kills)} | {sum(k['survived'] is True for k in kills)} "
                     f"| {sum(k['survived'] is False for k in kills)} | {sum(bool(k['partial']) for k in kills)} |")
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        print(f"<!-- {path} -->")
        if "kills" in data:
            print(fault_table(data))
        elif "timings" in data:
            print(moe_table(data))
        elif "profiles" in data:
            print(profile_tables(data))
        else:
            print(trainer_table(data))
            if any("tokens_per_s_incl_cache" in s for s in data["summary"].values()):
                print()
                print(trainer_memory_table(data))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
