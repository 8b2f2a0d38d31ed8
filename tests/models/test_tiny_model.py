"""The embedded tiny DeepSeek-OCR-2: config, tokenizer, processor, training step, cache."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from transformers import DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor

from deepsynth.data.collate import OCR_INSTRUCTION, DataCollator, build_example
from deepsynth.models import tiny
from deepsynth.models.loading import freeze_vision_modules

REPO = Path(__file__).resolve().parents[2]


def _state_equal(left: torch.nn.Module, right: torch.nn.Module) -> bool:
    a, b = left.state_dict(), right.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_config_is_a_small_moe_deepseek_ocr2():
    config = tiny.embedded_config()
    text = config.text_config
    assert text.mlp_layer_types[0] == "dense" and set(text.mlp_layer_types[1:]) == {"sparse"}
    assert (text.n_routed_experts, text.num_experts_per_tok, text.n_shared_experts) == (8, 2, 1)
    assert 128 <= text.hidden_size <= 192
    # SAM features feed the encoder directly: channel counts must line up.
    assert config.vision_config.sam_config.downsample_channels[-1] == config.vision_config.encoder_config.hidden_size
    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(config)
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 6_000_000


def test_tokenizer_ids_match_the_config():
    tokenizer = tiny.shipped_tokenizer()
    config = tiny.embedded_config()
    assert len(tokenizer) == config.text_config.vocab_size
    assert tokenizer.bos_token == "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    assert tokenizer.eos_token == "<\uff5cend\u2581of\u2581sentence\uff5c>"
    assert tokenizer.pad_token == "<\uff5c\u2581pad\u2581\uff5c>"
    assert tokenizer.bos_token_id == config.text_config.bos_token_id
    assert tokenizer.eos_token_id == config.text_config.eos_token_id
    assert tokenizer.pad_token_id == config.text_config.pad_token_id
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id
    text = "L'œuvre d'Hélène, créée à Noël — « ça coûte 12,50 € »."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: lossless, accents included
    assert len(ids) < len(text) / 2  # trained on French: far fewer tokens than characters
    assert tokenizer("Bonjour")["input_ids"][0] == tokenizer.bos_token_id


def test_shipped_tokenizer_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("build_tokenizer", REPO / "scripts" / "build_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tiny.TOKENIZER_DIR / name).read_bytes(), name
    assert (tiny.TOKENIZER_DIR / "tokenizer.json").stat().st_size < 1_000_000


def test_processor_expands_image_to_what_the_model_consumes(page_image):
    processor = tiny.build_processor()
    inputs = processor(images=page_image, text="<image>\nFree OCR.", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    assert int((inputs["input_ids"] == tiny.IMAGE_TOKEN_ID).sum()) == tiny.NUM_VISION_TOKENS == 145
    assert "pixel_values_local" not in inputs  # no tiles for a 384 px page
    model, _ = tiny.build_embedded_model()
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], None, inputs["num_local_patches"]).pooler_output
    assert features[0].shape[0] == tiny.NUM_VISION_TOKENS


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first, _ = tiny.build_embedded_model(seed=0)
    assert torch.equal(torch.rand(1), expected)
    second, _ = tiny.build_embedded_model(seed=0)
    other, _ = tiny.build_embedded_model(seed=1)
    assert _state_equal(first, second)
    assert not _state_equal(first, other)


def test_forward_backward_trains_and_vision_stays_frozen(embedded, page_image):
    model, processor = embedded
    frozen = freeze_vision_modules(model, "deepseek_ocr2")
    assert frozen > 0
    batch = DataCollator(processor)(
        [build_example(processor, page_image, "Budget voté ; école rénovée.", max_length=400)]
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        for name, parameter in model.named_parameters():
            if name.startswith(("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator")):
                assert not parameter.requires_grad and parameter.grad is None, name
        assert model.lm_head.weight.grad is not None
        assert model.model.language_model.layers[1].mlp.experts.gate_up_proj.grad is not None
        optimizer.step()
        optimizer.zero_grad()
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < losses[0]  # it learns


def test_load_embedded_builds_once_then_reads_the_cache(tmp_path, monkeypatch):
    model, processor = tiny.load_embedded(tmp_path, pretrained=False)
    directory = tiny.embedded_cache_dir(tmp_path)
    assert directory.parent == tmp_path / "tiny-ocr2"
    assert (directory / "model.safetensors").is_file() and (directory / "processor_config.json").is_file()

    def no_build(*args, **kwargs):
        raise AssertionError("the second load must read the cache, not rebuild")

    monkeypatch.setattr(tiny, "build_embedded_model", no_build)
    again, processor_again = tiny.load_embedded(tmp_path, pretrained=False)
    assert _state_equal(model, again)
    assert isinstance(processor_again, DeepseekOcr2Processor)
    assert processor_again.patch_size == tiny.SAM_PATCH_SIZE
    assert processor_again.image_processor.size["height"] == tiny.IMAGE_SIZE


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPSYNTH_CACHE", str(tmp_path / "env-cache"))
    assert tiny.embedded_cache_dir().parent.parent == tmp_path / "env-cache"
    monkeypatch.delenv("DEEPSYNTH_CACHE")
    assert tiny.cache_root() == Path.home() / ".cache" / "deepsynth"


def test_shipped_weights_take_precedence(tmp_path, monkeypatch):
    shipped, _ = tiny.build_embedded_model(seed=7)
    shipped.save_pretrained(str(tmp_path / "tiny-ocr2"))
    monkeypatch.setattr(tiny, "SHIPPED_DIR", tmp_path / "tiny-ocr2")
    assert tiny.shipped_checkpoint() == tmp_path / "tiny-ocr2"
    model, processor = tiny.load_embedded(tmp_path / "cache")
    assert _state_equal(model, shipped)
    assert not (tmp_path / "cache").exists()  # nothing built, nothing cached
    assert isinstance(processor, DeepseekOcr2Processor)
    # The random-init build stays reachable (tests, and the pretraining's starting point).
    random_init, _ = tiny.load_embedded(tmp_path / "cache", pretrained=False)
    assert _state_equal(random_init, tiny.build_embedded_model(seed=0)[0])
    assert not _state_equal(random_init, shipped)


def test_ocr_example_runs_through_the_model(embedded, page_image):
    model, processor = embedded
    example = build_example(processor, page_image, "Compte rendu du conseil municipal", instruction=OCR_INSTRUCTION, max_length=300)
    with torch.no_grad():
        output = model(**DataCollator(processor)([example]))
    assert torch.isfinite(output.loss)


def test_version_changes_with_seed():
    assert tiny.embedded_version(0) != tiny.embedded_version(1)
    assert tiny.embedded_version(0).startswith(f"v{tiny.TINY_MODEL_VERSION}-")
