"""Real-size memory on the user's path (issue 20): shards read without mmap, 4-bit experts quantized as read,
no fp32 up-cast of frozen weights, a staged upcast equal to a direct load, the vision path let go.

Each test loads a replica checkpoint folder written by benchmarks/user_path.py (tiny configs of both
families, bf16 shards in the Hub's layout) through DeepSynth's own loader.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deepsynth.models.loading import load_model_and_processor
from deepsynth.models.memory import VisionReleasedError, release_vision, upcast, vision_released

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import user_path  # noqa: E402  (benchmarks/user_path.py: the replica writer)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    return {family: user_path.write_replica(family, root / family, tiny=True)["folder"] for family in user_path.FAMILIES}


def _tensors_in_fp32(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones too), floating ones cast to fp32 (exact from bf16)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: t.detach().float() if t.is_floating_point() else t for name, t in tensors.items()}


@pytest.mark.parametrize("family", ["deepseek-ocr", "deepseek-ocr-2"])
def test_a_fp32_load_of_a_bf16_checkpoint_holds_its_exact_values_directly_or_staged(replicas, family):
    # The reference: transformers' read of the weights as stored (bf16), each value widened exactly.
    expected = _tensors_in_fp32(load_model_and_processor(replicas[family], dtype="bfloat16").model)
    direct = load_model_and_processor(replicas[family], dtype="float32")  # read as stored, upcast one by one
    staged = load_model_and_processor(replicas[family], dtype="float32", staged_upcast=True)
    assert staged.model.dtype == torch.bfloat16 and staged.dtype == torch.float32  # loaded as stored
    assert upcast(staged.model, torch.float32, staged.family) > 0  # the vision path first
    assert staged.finish_upcast() > 0
    assert direct.model.dtype == torch.float32
    for loaded in (direct, staged):
        got = {**dict(loaded.model.named_parameters()), **dict(loaded.model.named_buffers())}
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def _page_inputs(loaded):
    from PIL import Image

    from deepsynth.data.collate import build_generation_inputs

    return build_generation_inputs(loaded.processor, Image.new("RGB", (300, 400), "white"), "Free OCR.",
                                   dtype=loaded.model.dtype)


def test_embeddings_kept_as_stored_give_the_same_logits(replicas):
    from deepsynth.models.memory import keep_embeddings_stored

    loaded = load_model_and_processor(replicas["deepseek-ocr"], dtype="float32")
    inputs = _page_inputs(loaded)
    with torch.no_grad():
        before = loaded.model(**inputs).logits
    table = loaded.model.get_input_embeddings().weight
    saved = keep_embeddings_stored(loaded.model, loaded.stored_dtype, torch.float32)
    assert loaded.stored_dtype == torch.bfloat16 and saved == table.numel() * 2
    assert loaded.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert upcast(loaded.model, torch.float32) == 0  # a staged upcast leaves the kept table as it is
    with torch.no_grad():
        assert torch.equal(loaded.model(**inputs).logits, before)


def test_a_released_vision_path_refuses_pixels_and_takes_cached_features(replicas):
    from deepsynth.models.feature_cache import CachedImageFeatures

    loaded = load_model_and_processor(replicas["deepseek-ocr-2"])
    inputs = _page_inputs(loaded)
    pixels = {key: inputs[key] for key in ("pixel_values", "pixel_values_local", "num_local_patches") if key in inputs}
    with torch.no_grad():
        (features,) = loaded.model.get_image_features(**pixels, return_dict=True).pooler_output
        before = loaded.model(**inputs).logits
    vision = sum(p.numel() * p.element_size() for n, p in loaded.model.named_parameters()
                 if n.startswith(("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator")))
    assert release_vision(loaded.model, loaded.family) >= vision > 0  # and the vision buffers
    assert vision_released(loaded.model)
    with pytest.raises(VisionReleasedError, match="released"), torch.no_grad():
        loaded.model(**inputs)
    text = {key: inputs[key] for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        after = loaded.model(**text, mm_encoder_outputs={"image": CachedImageFeatures(pooler_output=[features])}).logits
    assert torch.equal(before, after)
    loaded.model.to("cpu")  # what the Trainer does: the stand-ins move nowhere, nothing is allocated


def test_4bit_experts_are_quantized_as_read_and_equal_quantizing_after_the_load(replicas):
    from deepsynth.models.quantization.parametrizations import quantize_fused_experts
    from deepsynth.models.quantization.report import quantization_report

    on_load = load_model_and_processor(replicas["deepseek-ocr"], quantization="4bit")
    report = quantization_report(on_load.model)
    assert report["quantized_by_kind"]["fused_experts"] > 0
    # The same quantization as quantizing the full-precision experts once loaded (the former path).
    after = load_model_and_processor(replicas["deepseek-ocr"], quantization="4bit")
    for name, parameter in list(after.model.named_parameters()):
        assert "parametrizations" in name or parameter.dim() != 3 or "experts" not in name
    state_on_load = {k: v for k, v in on_load.model.state_dict().items()}
    state_after = {k: v for k, v in after.model.state_dict().items()}
    assert state_on_load.keys() == state_after.keys()
    inputs = _page_inputs(on_load)
    with torch.no_grad():
        assert torch.equal(on_load.model(**inputs).logits, after.model(**inputs).logits)
    assert quantize_fused_experts(on_load.model, "4bit", on_load.family) == 0  # nothing left in full precision


def test_4bit_load_casts_no_frozen_weight_to_fp32(replicas):
    def fp32_names(loaded):
        return {name for name, parameter in loaded.model.named_parameters() if parameter.dtype == torch.float32}

    loaded = load_model_and_processor(replicas["deepseek-ocr-2"], quantization="4bit", dtype="bfloat16")
    plain = load_model_and_processor(replicas["deepseek-ocr-2"], dtype="bfloat16")
    # Only what the model itself keeps in fp32 (its routers); peft.prepare_model_for_kbit_training would
    # have cast the vision path, the embeddings and lm_head too.
    assert fp32_names(loaded) == fp32_names(plain) != set()
    assert all(".mlp.gate." in name for name in fp32_names(loaded))
    assert all(not parameter.requires_grad for parameter in loaded.model.parameters())


_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from deepsynth.models.loading import load_model_and_processor
    load_model_and_processor(sys.argv[2], dtype="float32")  # every import and lazy initialisation first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded = load_model_and_processor(sys.argv[1], dtype="float32")
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, weights)
""")


def _llama(folder: Path, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from deepsynth.models import tiny

    config = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=2048, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="20MB")
    tiny.shipped_tokenizer().save_pretrained(folder)
    return folder


def test_loading_keeps_no_shard_resident_beside_the_model(tmp_path):
    """transformers maps every shard and keeps them mapped until the load ends: read with pread, the peak
    of a load does not carry the checkpoint's bytes on top of the model."""
    big, warm_up = _llama(tmp_path / "big", 12), _llama(tmp_path / "small", 1)
    file_bytes = sum(p.stat().st_size for p in big.glob("*.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(big), str(warm_up)], capture_output=True,
                         text=True, env=env, check=True).stdout.split()
    growth, weights = int(out[-2]), int(out[-1])
    assert file_bytes > 100e6 and abs(weights - 2 * file_bytes) < 1e6  # fp32 from bf16 shards
    # Measured here: read with mmap the high-water mark rises by about the checkpoint's size (104 MiB for a
    # 104 MiB checkpoint: every shard read stays resident); with pread by 19 MiB (the fp32 weights reuse
    # what the warm-up load freed).
    assert growth < file_bytes / 2, (growth, weights, file_bytes)


def test_each_step_logs_its_own_peak_so_a_run_says_which_step_sets_it():
    # A 300 MB transient inside one step: that step's peak shows it, the next step's does not, and
    # the process's peak (what wait4 reports to the benchmarks) is still the kernel's, never reset.
    script = textwrap.dedent("""
        import logging, sys, time, torch
        from deepsynth.models.memory import log_memory
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        log_memory("start")
        transient = torch.ones(75_000_000)
        time.sleep(0.2)
        del transient
        log_memory("transient")
        time.sleep(0.1)
        log_memory("quiet")
    """)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    lines = {m[0]: (float(m[1]), float(m[2]), float(m[3])) for m in re.findall(
        r"memory after (\w+): (\d+) MiB resident, peak during it (\d+) MiB, peak so far (\d+) MiB", output)}
    assert set(lines) == {"start", "transient", "quiet"}, output
    (resident, _, _), (_, transient_peak, so_far), (_, quiet_peak, _) = (
        lines["start"], lines["transient"], lines["quiet"])
    assert transient_peak >= resident + 250, output
    assert quiet_peak < transient_peak - 250, output
    assert so_far >= transient_peak, output
