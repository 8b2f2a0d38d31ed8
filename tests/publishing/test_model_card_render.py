"""Model card content: front matter, settings, parameter and metric tables, and the loading snippet."""

from __future__ import annotations

import ast
import re

import pytest
import transformers
import yaml
from huggingface_hub import ModelCard
from publishing_support import REPO_ID, metrics_for, training_config_for

from deepsynth.publishing import render_model_card, write_model_card
from deepsynth.publishing.model_card import CARD_MARKER

FAMILIES = {
    "deepseek_ocr2": ("DeepseekOcr2ForConditionalGeneration", "AutoProcessor"),
    "deepseek_ocr": ("UnlimitedOcrForConditionalGeneration", "AutoProcessor"),
    "causal_lm": ("AutoModelForCausalLM", "AutoTokenizer"),
}


def front_matter(card: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", card, flags=re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def snippet(card: str) -> str:
    match = re.search(r"```python\n(.*?)```", card, flags=re.S)
    assert match, "no python snippet"
    return match.group(1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_card_per_family(family):
    model_class, preprocessor = FAMILIES[family]
    metrics, config = metrics_for(family), training_config_for(family)
    card = render_model_card(config, metrics, repo_id=REPO_ID)

    meta = front_matter(card)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == metrics["base_model"]
    assert {"deepsynth", "lora"} <= set(meta["tags"])
    assert ModelCard(card).data.library_name == "peft"  # huggingface_hub parses it too
    assert "Seq2Seq" not in card

    code = snippet(card)
    tree = ast.parse(code)  # valid Python
    imports = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names}
    assert ("peft", "PeftModel") in imports
    assert ("transformers", model_class) in imports and ("transformers", preprocessor) in imports
    assert hasattr(transformers, model_class) and hasattr(transformers, preprocessor)
    assert f'{model_class}.from_pretrained("{metrics["base_model"]}"' in code
    assert f'PeftModel.from_pretrained(base, "{REPO_ID}")' in code

    # Settings, exact parameter counts, data size, metrics with deltas.
    assert "`attention_experts`" in card
    assert "| Rank (r) | 16 |" in card and "| Alpha | 32 |" in card and "| Dropout | 0.05 |" in card
    assert "`q_proj`, `k_proj`, `v_proj`, `o_proj`" in card  # resolved targets win over the config's
    assert "`mlp.experts.gate_up_proj`" in card
    assert "| `attention` | 1,000,000 | 81.00% |" in card
    assert "| **Total** | **1,234,567** | 100% |" in card
    assert "| Training samples | 12 |" in card and "| Evaluation samples | 3 |" in card
    assert "| Optimizer updates | 30 |" in card
    assert "| `loss` | 2.5000 | 1.2500 | -1.2500 | lower is better |" in card
    assert "| `rougeL` | 0.4100 | 0.6200 | +0.2100 | higher is better |" in card
    assert "| `cer` | 0.3000 | 0.1200 | -0.1800 | lower is better |" in card


def test_card_with_no_metrics_still_renders():
    card = render_model_card({}, {})
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and "base_model" not in meta
    assert "not recorded" in card and "Seq2Seq" not in card
    ast.parse(snippet(card))
    assert "AutoModelForCausalLM" in snippet(card)


def test_card_with_partial_metrics():
    metrics = {
        "model_class": "UnlimitedOcrForConditionalGeneration",  # family inferred from the class
        "eval": {"after": {"cer": 0.2}},
        "trainable_params": {"total": 10},
        "resolved_targets": {"target_modules": r".*\.(q_proj|v_proj)"},
    }
    card = render_model_card({"model_name": "org/base", "license": "mit"}, metrics)
    meta = front_matter(card)
    assert meta["base_model"] == "org/base" and meta["license"] == "mit"
    assert "UnlimitedOcrForConditionalGeneration.from_pretrained(\"org/base\"" in card
    assert "| `cer` | - | 0.2000 | - | lower is better |" in card
    assert "**10**" in card
    assert r"`.*\.(q_proj\|v_proj)` (regex)" in card  # the regex's "|" does not split the table cell
    assert "<this-adapter-repo-or-folder>" in card


def test_family_inferred_from_base_model_name():
    card = render_model_card({"model_name": "deepseek-ai/DeepSeek-OCR-2"}, {})
    assert "DeepseekOcr2ForConditionalGeneration" in snippet(card)


def test_write_model_card(make_adapter):
    folder = make_adapter(family="causal_lm")
    path = write_model_card(folder, repo_id=REPO_ID)
    card = path.read_text()
    assert path == folder / "README.md" and CARD_MARKER in card
    assert "AutoTokenizer" in card and "![Training loss](loss_curve.png)" in card
    assert f'AutoTokenizer.from_pretrained("{REPO_ID}")' in card  # tokenizer files are published
    assert not (folder / "README.md.tmp").exists()

    # A hand-written card is kept; a generated one is refreshed.
    path.write_text("# My own card\n")
    write_model_card(folder, repo_id=REPO_ID)
    assert path.read_text() == "# My own card\n"
    write_model_card(folder, repo_id=REPO_ID, overwrite=True)
    assert CARD_MARKER in path.read_text()


def test_card_without_processor_files_loads_preprocessing_from_the_base(tmp_path):
    (tmp_path / "metrics.json").write_text('{"model_family": "deepseek_ocr2", "base_model": "org/ocr2"}')
    card = write_model_card(tmp_path, repo_id=REPO_ID).read_text()
    assert 'AutoProcessor.from_pretrained("org/ocr2")' in card


def test_card_reads_the_trainer_schedule_and_flags_training_set_evaluation():
    config = {**training_config_for("causal_lm"), "optimizer": {"learning_rate": 2e-4, "scheduler_type": "cosine"}}
    metrics = {**metrics_for("causal_lm"), "eval_on_training_data": True, "train": {"train_loss": 0.5},
               "eval": {"before": {"loop_rate": 0.5}, "after": {"loop_rate": 0.0}}}
    card = render_model_card(config, metrics)
    assert "| Learning rate | 0.0002 |" in card and "| LR schedule | `cosine` |" in card
    assert "| Final training loss | 0.5000 |" in card
    assert "Evaluated on the training documents" in card
    assert "| `loop_rate` | 0.5000 | 0.0000 | -0.5000 | lower is better |" in card
