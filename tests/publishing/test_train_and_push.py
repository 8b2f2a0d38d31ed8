"""A full train + push run: the adapter reaches the (fake, loopback) Hub and the token leaks nowhere."""

import json
import logging

from fake_hub import FakeHub
from publishing_support import REPO_ID, TOKEN, assert_no_token

from deepsynth.training.config import TrainerConfig
from deepsynth.training.production_trainer import UnifiedProductionTrainer


def test_train_then_push_uploads_the_adapter_and_never_leaks_the_token(fake_hub: FakeHub, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "run"
    config = TrainerConfig(
        output_dir=str(out), preset="router_focused", max_train_samples=2, max_eval_samples=1, num_epochs=1,
        gradient_accumulation_steps=2, max_new_tokens=4, resume_from_checkpoint="never",
        push_to_hub=True, hub_model_id=REPO_ID, hub_private=True, hub_token=TOKEN,
    )
    metrics, paths = UnifiedProductionTrainer(config).train()

    assert metrics["push"]["repo_id"] == REPO_ID and not metrics["push"]["failed"]
    uploaded = fake_hub.files(REPO_ID)
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json", "metrics.json",
            "README.md"} <= set(uploaded)
    assert not any(name.startswith("checkpoint-") for name in uploaded)
    assert uploaded["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    card = uploaded["README.md"].decode()
    assert "router_focused" in card and "DeepseekOcr2ForConditionalGeneration" in card
    assert "Seq2SeqLM" not in card
    # The token was used (the fake hub checks it) and is in no file, log, output or metrics.
    assert json.loads((out / "training_config.json").read_text()).get("hub_token") is None
    captured = capsys.readouterr()
    assert_no_token(paths=(out,), texts=(caplog.text, captured.out, captured.err, json.dumps(metrics)))
    assert_no_token(texts=tuple(content.decode("utf-8", "replace") for content in uploaded.values()))


def test_push_command_exit_codes(fake_hub: FakeHub, make_adapter, monkeypatch, capsys):
    from deepsynth.cli import main

    folder = make_adapter()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", "--adapter", str(folder), "--repo-id", REPO_ID, "--private"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["repo_id"] == REPO_ID and "adapter_model.safetensors" in report["uploaded"]

    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_value")
    assert main(["push", "--adapter", str(folder), "--repo-id", REPO_ID]) == 1  # failure is an exit code
    captured = capsys.readouterr()
    assert "401" in captured.err
    assert json.loads(captured.out)["failed"]
    assert TOKEN not in captured.out + captured.err
