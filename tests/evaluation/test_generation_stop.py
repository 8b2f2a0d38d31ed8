"""Every generation says how it ended: EOS, max_new_tokens, or an end the repetition guard forced; empty ones say so.

The model is a real transformers class (Phi, whose lm_head has a bias) with its final layer norm set
to zero, so its logits are the lm_head bias at every step: the test decides the model's preferences
exactly, and greedy decoding with transformers' own repetition guard does the rest.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import PhiConfig, PhiForCausalLM

from deepsynth.cli import main
from deepsynth.evaluation.compare import Generation, generate_text
from deepsynth.models import tiny

DOCUMENT = "Le conseil municipal se réunira mardi."


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.shipped_tokenizer()


def _words(tokenizer, count: int) -> list[int]:
    """``count`` token ids that decode to visible words and do not occur in the prompt."""
    prompt = set(tokenizer(f"Résume ce document.\n\n{DOCUMENT}")["input_ids"])
    found = []
    for token in range(10, tokenizer.vocab_size):
        text = tokenizer.decode([token])
        if text.strip().isalpha() and token not in prompt:
            found.append(token)
        if len(found) == count:
            return found
    raise AssertionError("the tokenizer has too few word tokens")


def _model(tokenizer, preferences: dict[int, float]) -> PhiForCausalLM:
    """A Phi whose next-token logits are ``preferences`` (others -10) whatever the input."""
    config = PhiConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=512, bos_token_id=tiny.BOS_TOKEN_ID,
                       eos_token_id=tiny.EOS_TOKEN_ID, pad_token_id=tiny.PAD_TOKEN_ID)
    torch.manual_seed(0)
    model = PhiForCausalLM(config).eval()
    with torch.no_grad():
        model.model.final_layernorm.weight.zero_()
        model.model.final_layernorm.bias.zero_()
        model.lm_head.bias.fill_(-10.0)
        for token, logit in preferences.items():
            model.lm_head.bias[token] = logit
    return model


def _generate(model, tokenizer, source: str = DOCUMENT, *, max_new_tokens: int = 8, guard: int = 0) -> Generation:
    return generate_text(model, tokenizer, source, instruction="Résume ce document.", max_new_tokens=max_new_tokens,
                         no_repeat_ngram_size=guard)


def test_eos_as_the_first_token_is_an_empty_generation_that_says_so(tokenizer):
    generation = _generate(_model(tokenizer, {tiny.EOS_TOKEN_ID: 10.0}), tokenizer)
    assert generation == "" and isinstance(generation, str)  # callers that print a str keep working
    assert (generation.stop_reason, generation.new_tokens, generation.empty) == ("eos", 1, True)
    assert generation.report() == "empty generation: the model ended the text at once (EOS as its first token)"


def test_a_generation_cut_at_max_new_tokens_says_so(tokenizer):
    word, = _words(tokenizer, 1)
    generation = _generate(_model(tokenizer, {word: 10.0, tiny.EOS_TOKEN_ID: 5.0}), tokenizer, max_new_tokens=4)
    assert generation == tokenizer.decode([word] * 4).strip()
    assert (generation.stop_reason, generation.new_tokens, generation.blocked_repeats) == ("max_new_tokens", 4, 0)
    assert generation.report().startswith("stopped at max_new_tokens (4 tokens)")


def test_an_end_forced_by_the_repetition_guard_is_told_apart_from_the_models_own(tokenizer):
    word, = _words(tokenizer, 1)
    model = _model(tokenizer, {word: 10.0, tiny.EOS_TOKEN_ID: 5.0})
    # The model would repeat its word forever; the guard (no 1-gram twice) bans it, and EOS comes next.
    generation = _generate(model, tokenizer, guard=1)
    assert generation == tokenizer.decode([word]).strip()
    assert (generation.stop_reason, generation.new_tokens, generation.blocked_repeats) == ("repetition_guard", 2, 1)
    assert generation.report() == ("stopped by the repetition guard (no_repeat_ngram_size=1): it banned a repeat and "
                                   "the model then ended the text (EOS after 1 tokens)")
    # A word of the prompt: the guard bans it at once, and the generation is empty because of it.
    in_prompt = next(token for token in tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]
                     if tokenizer.decode([token]).strip().isalpha())
    empty = _generate(_model(tokenizer, {in_prompt: 10.0, tiny.EOS_TOKEN_ID: 5.0}), tokenizer, guard=1)
    assert (empty, empty.stop_reason, empty.new_tokens, empty.blocked_repeats) == ("", "repetition_guard", 1, 1)
    assert empty.report().startswith("empty generation: stopped by the repetition guard")


def test_repeats_blocked_on_the_way_are_counted(tokenizer):
    first, second, third = _words(tokenizer, 3)
    model = _model(tokenizer, {first: 10.0, second: 9.0, third: 8.0, tiny.EOS_TOKEN_ID: 1.0})
    generation = _generate(model, tokenizer, max_new_tokens=3, guard=1)
    assert generation == tokenizer.decode([first, second, third]).strip()
    assert (generation.stop_reason, generation.blocked_repeats) == ("max_new_tokens", 2)
    assert generation.report().endswith("the repetition guard (no_repeat_ngram_size=1) blocked 2 repeat(s) on the way")


@pytest.fixture(scope="module")
def silent_adapter(tmp_path_factory, tokenizer):
    """An adapter folder on a base model that ends every text at once (EOS first)."""
    root = tmp_path_factory.mktemp("silent")
    base = _model(tokenizer, {tiny.EOS_TOKEN_ID: 10.0})
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    get_peft_model(base, lora).save_pretrained(root / "adapter")
    (root / "adapter" / "training_config.json").write_text(
        json.dumps({"model_name": str(root / "base"), "max_new_tokens": 8}), encoding="utf-8")
    return root / "adapter"


def test_generate_says_why_it_printed_nothing(silent_adapter, capsys):
    assert main(["generate", "--adapter", str(silent_adapter), "--text", DOCUMENT]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # no blank line pretending to be an answer
    assert "[empty generation: the model ended the text at once (EOS as its first token)]" in captured.err
    assert main(["generate", "--adapter", str(silent_adapter), "--text", DOCUMENT, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report | {"report": None} == {"text": "", "stop_reason": "eos", "new_tokens": 1, "blocked_repeats": 0,
                                         "empty": True, "report": None, "image_mode": None}  # a text model
