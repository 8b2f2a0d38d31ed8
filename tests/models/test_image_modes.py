"""Resolution modes: the vision tokens each mode costs, on the real processors at the real models' settings.

The published figures (DeepSeek-OCR's paper and README; DeepSeek-OCR-2's README) count *valid* vision
tokens; the native transformers classes add a learned newline after every row of a view's token grid
(DeepSeek-OCR v1 only) and one view separator. The processors are built from the real checkpoint's
processor_config.json (tests/data/reference) and the shipped architectures; no weights are needed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from tiny_deepseek_ocr import reference_dir

from deepsynth.cli import main
from deepsynth.data.collate import DataCollator, build_example, build_generation_inputs
from deepsynth.errors import ConfigError
from deepsynth.models import tiny
from deepsynth.models.image_modes import get_mode, mode_for_model, vision_tokens_per_page
from deepsynth.models.loading import load_model_and_processor
from deepsynth.models.processors import apply_image_mode, build_deepseek_ocr_processor
from deepsynth.models.resolver import resolve_config, unlimited_ocr_config_from_deepseek_vl_v2
from deepsynth.training.config import TrainerConfig
from deepsynth.training.recommend import recommend

# DeepSeek-OCR's published valid vision tokens per mode, and its global view in pixels.
PUBLISHED_V1 = {"tiny": (512, 64), "small": (640, 100), "base": (1024, 256), "large": (1280, 400)}
GUNDAM_TILE = 100  # valid tokens per 640-px tile
OCR2_GLOBAL, OCR2_TILE = 256, 144  # DeepSeek-OCR-2: 1024 global view, 768-px tiles

# Pages: (width, height) → the tile grid (columns, rows) transformers' rule picks (2–6 tiles, best aspect).
PAGES = {(600, 800): (2, 3), (1240, 1754): (2, 3), (2000, 700): (3, 1), (1400, 1300): (2, 2), (640, 480): None}


def _image_tokens(processor, page: Image.Image) -> tuple[int, dict]:
    inputs = build_generation_inputs(processor, page, "Free OCR.")
    return int((inputs["input_ids"] == processor.image_token_id).sum()), inputs


@pytest.fixture(scope="module")
def v1_config():
    return unlimited_ocr_config_from_deepseek_vl_v2(json.loads((reference_dir() / "config.json").read_text()))


def _v1_processor(mode_name: str | None):
    settings = json.loads((reference_dir() / "processor_config.json").read_text())
    mode = None if mode_name is None else get_mode("deepseek_ocr", mode_name)
    return build_deepseek_ocr_processor(tiny.shipped_tokenizer(), settings, mode)


@pytest.mark.parametrize("mode", sorted(PUBLISHED_V1))
def test_deepseek_ocr_single_view_modes_cost_the_published_tokens(mode, v1_config):
    size, valid = PUBLISHED_V1[mode]
    side = math.isqrt(valid)
    processor = _v1_processor(mode)
    for page in [(600, 800), (1240, 1754), (300, 300)]:
        count, inputs = _image_tokens(processor, Image.new("RGB", page, "white"))
        assert inputs["pixel_values"].shape == (1, 3, size, size)
        assert "pixel_values_local" not in inputs  # one global view, no tiles
        # valid tokens + one newline per token row + the view separator (Base: 256 + 16 + 1 = 273)
        assert count == valid + side + 1
        assert vision_tokens_per_page("deepseek_ocr", mode, v1_config).global_tokens == count
    if mode == "base":
        assert count == 273


def test_deepseek_ocr_base_is_the_checkpoint_default():
    default = _v1_processor(None)
    assert _image_tokens(default, Image.new("RGB", (600, 800), "white"))[0] == 273
    assert get_mode("deepseek_ocr", None).name == "base"


def test_gundam_tiles_cost_100_tokens_each_plus_their_newlines(v1_config):
    processor = _v1_processor("gundam")
    tokens = vision_tokens_per_page("deepseek_ocr", "gundam", v1_config)
    for (width, height), grid in PAGES.items():
        count, inputs = _image_tokens(processor, Image.new("RGB", (width, height), "white"))
        assert inputs["pixel_values"].shape == (1, 3, 1024, 1024)  # the Base global view
        if grid is None:  # a page no larger than a tile: the global view alone
            assert count == 273 == tokens.global_tokens and inputs["num_local_patches"] == [0]
            continue
        columns, rows = grid
        assert inputs["patches_grid"] == [[columns, rows]]
        assert inputs["pixel_values_local"].shape == (columns * rows, 3, 640, 640)
        # 273 for the global view, 100 per tile, and a newline after each of the 10 token rows of a tile row
        assert count == 273 + GUNDAM_TILE * columns * rows + 10 * rows
        assert tokens.for_grid(columns, rows) == count
    assert tokens.most == 273 + 6 * GUNDAM_TILE + 6 * 10  # a 1×6 grid: six tile rows


@pytest.mark.parametrize("mode", ["dynamic", "base", "small"])
def test_deepseek_ocr2_modes_cost_256_global_and_144_per_tile(mode):
    resolved, scaled = mode_for_model("deepseek-community/DeepSeek-OCR-2", mode)
    from transformers import DeepseekOcr2Processor
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tiny.shipped_tokenizer())
    apply_image_mode(processor, scaled)
    tokens = vision_tokens_per_page(resolved.family, scaled, resolved.config)
    for (width, height), grid in PAGES.items():
        count, inputs = _image_tokens(processor, Image.new("RGB", (width, height), "white"))
        global_tokens = 144 if mode == "small" else OCR2_GLOBAL
        tiles = 0
        if mode == "dynamic" and max(width, height) > 768:
            tiles = math.prod(_ocr2_grid(width, height))
        # global view + 144 per 768-px tile + the view separator (no row newlines in OCR-2)
        assert count == global_tokens + OCR2_TILE * tiles + 1
        assert int(inputs["num_local_patches"][0]) == tiles
        expected = tokens.for_grid(*_ocr2_grid(width, height)) if tiles else tokens.global_tokens
        assert expected == count


def _ocr2_grid(width: int, height: int) -> tuple[int, int]:
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

    return get_optimal_tiled_canvas((height, width), (768, 768), 2, 6)


def test_the_embedded_model_reads_the_same_grids_at_half_the_pixels():
    # 8-px SAM patches: DeepSeek-OCR-2's 768/1024 views become 384/512 px, with the same token counts.
    resolved = resolve_config(None)
    assert get_mode(resolved.family, None, resolved.config, embedded=True).global_size == tiny.IMAGE_SIZE
    dynamic = vision_tokens_per_page(resolved.family, "dynamic", resolved.config)
    assert (dynamic.mode.global_size, dynamic.mode.tile_size) == (512, 384)
    assert dynamic.global_tokens == 257 and dynamic.tile_tokens == 144
    loaded = load_model_and_processor(None)
    assert loaded.image_mode.name == "small"
    page = Image.new("RGB", (640, 640), "white")
    assert _image_tokens(loaded.processor, page)[0] == tiny.NUM_VISION_TOKENS


def test_a_tiled_batch_mixes_pages_with_and_without_tiles():
    # The model consumes exactly the placeholders the processor wrote (it raises otherwise), and a
    # batch of a tiled page and an untiled one scores each as it scores alone.
    loaded = load_model_and_processor(None, image_mode="dynamic")
    pages = [Image.new("RGB", (800, 400), "white"), Image.new("RGB", (300, 300), "white")]  # 2×1 tiles, none
    examples = [build_example(loaded.processor, page, "Budget voté.", max_length=None) for page in pages]
    assert [int(example["num_local_patches"][0]) for example in examples] == [2, 0]
    collate = DataCollator(loaded.processor)
    model = loaded.model.eval()
    with torch.no_grad():
        alone = [float(model(**collate([example])).logits[0, -1].sum()) for example in examples]
        batch = model(**collate(examples)).logits
    lengths = [len(example["input_ids"]) for example in examples]
    together = [float(batch[row, length - 1].sum()) for row, length in enumerate(lengths)]
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-3)


def test_deepseek_ocr_gundam_runs_on_a_v1_checkpoint(deepseek_ocr_checkpoint):
    directory, _ = deepseek_ocr_checkpoint
    loaded = load_model_and_processor(str(directory), image_mode="gundam")
    examples = [build_example(loaded.processor, Image.new("RGB", (700, 700), "white"), "Budget voté.", max_length=None),
                build_example(loaded.processor, Image.new("RGB", (300, 300), "white"), "Budget.", max_length=None)]
    batch = DataCollator(loaded.processor)(examples)
    assert batch["patches_grid"] == [[2, 2], [1, 1]] and batch["num_local_patches"] == [4, 0]
    assert int((batch["input_ids"][0] == loaded.processor.image_token_id).sum()) == 273 + 4 * 100 + 2 * 10
    loss = loaded.model(**batch).loss
    assert torch.isfinite(loss)


def test_a_checkpoint_reads_its_own_settings_unless_a_mode_is_asked(deepseek_ocr_checkpoint, tmp_path):
    directory, _ = deepseek_ocr_checkpoint  # its processor_config.json says 256 px: no named mode
    own = load_model_and_processor(str(directory))
    assert (own.image_mode.name, own.image_mode.global_size) == ("checkpoint", 256)
    assert load_model_and_processor(str(directory), image_mode="tiny").processor.image_processor.size.height == 512
    # A local copy of the embedded model: its saved processor (384 px, no tiles) is the "small" mode.
    model, processor = tiny.build_embedded_model(seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert mode_for_model(str(tmp_path), None)[1].name == "small"
    assert mode_for_model(str(tmp_path), "dynamic")[1].tile_size == 384


def test_a_mode_the_family_lacks_is_one_error_naming_the_field_and_the_modes():
    with pytest.raises(ConfigError, match=r"^image_mode: got 'gundam', expected one of dynamic, base, small for "
                                          r"DeepSeek-OCR-2"):
        load_model_and_processor(None, image_mode="gundam")
    with pytest.raises(ConfigError, match="image_mode: got 'dynamic', expected one of tiny, small, base, large, gundam"):
        get_mode("deepseek_ocr", "dynamic")
    with pytest.raises(ConfigError, match="null for a text causal LM"):
        mode_for_model("HuggingFaceTB/SmolLM2-135M", "base")
    with pytest.raises(ConfigError, match=r"image_mode: got 'huge', expected null \(the model's default\) or tiny"):
        TrainerConfig(image_mode="huge")
    assert main(["inspect", "--preset", "tiny_data", "--image-mode", "gundam"]) == 2  # the embedded model is OCR-2


def test_recommend_and_inspect_show_the_vision_tokens_per_page(capsys):
    v1 = "deepseek-ai/DeepSeek-OCR"
    assert recommend(3, model=v1).vision_tokens["global_tokens"] == 273
    assert recommend(3, model=v1, image_mode="large").vision_tokens["global_tokens"] == 421
    assert main(["inspect", "--model", v1, "--preset", "tiny_data", "--image-mode", "gundam"]) == 0
    out = capsys.readouterr().out
    assert "vision tokens per page (gundam mode): 273 per page + 100 per tile + 10 per row of tiles" in out
    assert main(["recommend", "--num-samples", "3", "--model", "deepseek-community/DeepSeek-OCR-2"]) == 0
    assert "257 per page + 144 per tile" in capsys.readouterr().out
    assert recommend(3, model="HuggingFaceTB/SmolLM2-135M").vision_tokens is None
