"""Smoke run of benchmarks/peers.py with no peer installed: the harness runs DeepSynth in a fresh process
with the shared instrumentation, records missing peers with their install command, and builds the
inputs each peer would be given."""

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


def load_module():
    spec = importlib.util.spec_from_file_location("peers_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peers_harness_smoke(tmp_path, capsys):
    peers = load_module()
    cache = tmp_path / "cache"  # an empty cache: no peer venv exists
    out = tmp_path / "peers.json"
    code = peers.main(["compare", "--smoke", "--tools", "deepsynth,trl", "--rounds", "1", "--cache", str(cache),
                       "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["not_installed"] == {"trl": "python benchmarks/peers.py install --tools trl"}
    (run,) = result["runs"]["deepsynth"]
    job = result["job"]
    # 2 samples, batch 2, accumulation 1, 1 epoch: one update, at the rate the recipe sets (warmup is
    # bounded by the run in DeepSynth, so the only update is not spent at learning rate 0).
    assert run["optimizer_updates"] == 1 and len(run["learning_rates"]) == 1
    assert run["learning_rates"][0] > 0
    assert run["trainer_class"].startswith("deepsynth.")
    # The tokens counted are the batches DeepSynth built: the labelled ones equal the shared encoding's
    # targets + EOS, so every tool's throughput is counted on the same footing.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result["model"])
    rows = peers.read_jsonl(cache / "work" / "smoke" / "train.jsonl")
    encoded = [peers.encode(tokenizer, r["text"], r["summary"], job["max_length"]) for r in rows]
    assert run["labelled_tokens"] == sum(sum(1 for label in labels if label != -100) for _, labels in encoded)
    assert run["tokens"] == sum(len(ids) for ids, _ in encoded)
    assert math.isfinite(run["heldout_loss"]) and run["heldout_tokens"] > 0 and isinstance(run["generation"], str)
    assert {"q_proj", "down_proj"} <= {name.rsplit(".", 1)[-1] for name in run["lora_modules"]}
    assert result["summary"]["deepsynth"]["tokens_per_s"]["n"] == 1
    assert "| deepsynth |" in capsys.readouterr().out
    assert peers.main(["tables", str(out)]) == 0  # the docs' tables come from the same file
    assert "| deepsynth |" in capsys.readouterr().out


def test_peer_inputs_are_what_their_users_write(tmp_path):
    """The LLaMA-Factory and ms-swift arguments carry the same recipe, on the same documents."""
    peers = load_module()
    job = peers.default_job()
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "Un texte.", "summary": "Un résumé."}) + "\n")
    factory = peers.llamafactory_args(job, tmp_path, "/models/m", tmp_path / "out")
    swift = peers.swift_args(job, tmp_path, "/models/m", tmp_path / "out")
    for args in (factory, swift):
        assert args["learning_rate"] == job["learning_rate"] and args["warmup_steps"] == job["warmup_steps"]
        assert args["per_device_train_batch_size"] == job["batch_size"] and args["lora_rank"] == 16
    assert factory["lora_target"].split(",") == job["lora_targets"] == swift["target_modules"]
    info = json.loads((tmp_path / "dataset_info.json").read_text())["peers_train"]
    (line,) = (tmp_path / info["file_name"]).read_text().splitlines()
    user, assistant = json.loads(line)["messages"]
    assert user["content"] == f"{peers.INSTRUCTION}\n\nUn texte." and assistant["content"] == "Un résumé."
