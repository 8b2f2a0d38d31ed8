"""A tiny DeepSeek-OCR v1 checkpoint written under DeepSeek-OCR's real parameter names (test helper)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from deepsynth.models import tiny

V1_LANGUAGE_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 1,
    "first_k_dense_replace": 1,
    "hidden_size": 64,
    "intermediate_size": 128,
    "kv_lora_rank": None,
    "lm_head": True,
    "max_position_embeddings": 2048,
    "moe_intermediate_size": 32,
    "n_group": 1,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_attention_heads": 4,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 2,
    "num_key_value_heads": 4,
    "q_lora_rank": None,
    "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0,
    "rm_head": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "use_mla": False,
    "v_head_dim": 0,
    "vocab_size": tiny.VOCAB_SIZE,
}

# Same layout as DeepSeek-OCR's config.json (tests/data/reference/deepseek-ocr/config.json), tiny sizes.
V1_CONFIG = {
    "_name_or_path": "tiny/deepseek-ocr",
    "architectures": ["DeepseekOCRForCausalLM"],
    "candidate_resolutions": [[1024, 1024]],
    "global_view_pos": "head",
    "language_config": V1_LANGUAGE_CONFIG,
    "model_type": "deepseek_vl_v2",
    "projector_config": {"input_dim": 128, "model_type": "mlp_projector", "n_embed": 64, "projector_type": "linear"},
    "tile_tag": "2D",
    "torch_dtype": "float32",
    "vision_config": {
        "image_size": 1024,
        "mlp_ratio": 3.7362,
        "model_name": "deeplip_b_l",
        "model_type": "vision",
        "width": {
            "clip-l-14-224": {"heads": 2, "image_size": 224, "layers": 1, "patch_size": 14, "width": 64},
            "sam_vit_b": {"downsample_channels": [32, 64], "global_attn_indexes": [1], "heads": 2, "layers": 2, "width": 32},
        },
    },
    **{key: value for key, value in V1_LANGUAGE_CONFIG.items() if key != "architectures"},
}

# 256 px instead of 1024 keeps the SAM forward cheap; token count 4×(4+1)+1 = 21.
V1_PROCESSOR_CONFIG = {
    "add_special_token": False,
    "candidate_resolutions": [[256, 256]],
    "downsample_ratio": 4,
    "ignore_id": -100,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_token": "<image>",
    "mask_prompt": False,
    "normalize": True,
    "pad_token": "<\uff5c\u2581pad\u2581\uff5c>",
    "patch_size": 16,
    "processor_class": "DeepseekVLV2Processor",
    "sft_format": "deepseek",
}
V1_IMAGE_TOKENS = 4 * (4 + 1) + 1

# Every DeepSeek-OCR parameter-name pattern (digits → N), from the real checkpoint's
# model.safetensors.index.json; test_v1_names_match_reference re-derives it from tests/data/reference.
DEEPSEEK_OCR_KEY_PATTERNS = frozenset(
    """
lm_head.weight
model.embed_tokens.weight
model.image_newline
model.layers.N.input_layernorm.weight
model.layers.N.mlp.down_proj.weight
model.layers.N.mlp.experts.N.down_proj.weight
model.layers.N.mlp.experts.N.gate_proj.weight
model.layers.N.mlp.experts.N.up_proj.weight
model.layers.N.mlp.gate.weight
model.layers.N.mlp.gate_proj.weight
model.layers.N.mlp.shared_experts.down_proj.weight
model.layers.N.mlp.shared_experts.gate_proj.weight
model.layers.N.mlp.shared_experts.up_proj.weight
model.layers.N.mlp.up_proj.weight
model.layers.N.post_attention_layernorm.weight
model.layers.N.self_attn.k_proj.weight
model.layers.N.self_attn.o_proj.weight
model.layers.N.self_attn.q_proj.weight
model.layers.N.self_attn.v_proj.weight
model.norm.weight
model.projector.layers.bias
model.projector.layers.weight
model.sam_model.blocks.N.attn.proj.bias
model.sam_model.blocks.N.attn.proj.weight
model.sam_model.blocks.N.attn.qkv.bias
model.sam_model.blocks.N.attn.qkv.weight
model.sam_model.blocks.N.attn.rel_pos_h
model.sam_model.blocks.N.attn.rel_pos_w
model.sam_model.blocks.N.mlp.linN.bias
model.sam_model.blocks.N.mlp.linN.weight
model.sam_model.blocks.N.normN.bias
model.sam_model.blocks.N.normN.weight
model.sam_model.neck.N.bias
model.sam_model.neck.N.weight
model.sam_model.net_N.weight
model.sam_model.patch_embed.proj.bias
model.sam_model.patch_embed.proj.weight
model.sam_model.pos_embed
model.view_seperator
model.vision_model.embeddings.class_embedding
model.vision_model.embeddings.patch_embedding.weight
model.vision_model.embeddings.position_embedding.weight
model.vision_model.pre_layrnorm.bias
model.vision_model.pre_layrnorm.weight
model.vision_model.transformer.layers.N.layer_normN.bias
model.vision_model.transformer.layers.N.layer_normN.weight
model.vision_model.transformer.layers.N.mlp.fcN.bias
model.vision_model.transformer.layers.N.mlp.fcN.weight
model.vision_model.transformer.layers.N.self_attn.out_proj.bias
model.vision_model.transformer.layers.N.self_attn.out_proj.weight
model.vision_model.transformer.layers.N.self_attn.qkv_proj.bias
model.vision_model.transformer.layers.N.self_attn.qkv_proj.weight
""".split()
)


def key_pattern(name: str) -> str:
    return re.sub(r"\d+", "N", name)


def reference_dir() -> Path:
    """DeepSeek-OCR's real config, processor config and weight index, carried as test data in tests/data."""
    return Path(__file__).resolve().parents[1] / "data" / "reference" / "deepseek-ocr"


# Native unlimited_ocr name → DeepSeek-OCR name, written out here independently of transformers'
# own conversion map, so loading is checked against the real naming and not against itself.
_SAM_RENAMES = (
    (r"layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"layers\.(\d+)\.", r"blocks.\1."),
    (r"patch_embed\.projection\.", "patch_embed.proj."),
    (r"neck\.conv1\.", "neck.0."),
    (r"neck\.layer_norm1\.", "neck.1."),
    (r"neck\.conv2\.", "neck.2."),
    (r"neck\.layer_norm2\.", "neck.3."),
    (r"proj\.conv1\.", "net_2."),
    (r"proj\.conv2\.", "net_3."),
)


def to_deepseek_ocr_state_dict(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and unfuse / fuse) a native UnlimitedOcr state dict into DeepSeek-OCR's checkpoint layout."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in native.items():
        tensor = tensor.detach().clone()
        if name.startswith("model.vision_tower.sam_encoder."):
            rest = name.removeprefix("model.vision_tower.sam_encoder.")
            for pattern, replacement in _SAM_RENAMES:
                rest, count = re.subn("^" + pattern, replacement, rest)
                if count:
                    break
            out["model.sam_model." + rest] = tensor
        elif name.startswith("model.vision_tower.vision_encoder."):
            rest = name.removeprefix("model.vision_tower.vision_encoder.").replace("encoder.layers.", "transformer.layers.")
            match = re.match(r"(.*self_attn\.)([qkv])_proj\.(weight|bias)$", rest)
            if match:  # DeepSeek-OCR's CLIP keeps q, k, v fused in one qkv_proj
                qkv.setdefault(f"model.vision_model.{match[1]}qkv_proj.{match[3]}", {})[match[2]] = tensor
            else:
                out["model.vision_model." + rest] = tensor
        elif name.startswith("model.multi_modal_projector."):
            out["model.projector.layers." + name.rsplit(".", 1)[1]] = tensor
        elif name == "model.view_separator":
            out["model.view_seperator"] = tensor  # sic: DeepSeek-OCR's spelling
        elif name.startswith("model.language_model."):
            rest = name.removeprefix("model.language_model.")
            match = re.match(r"(layers\.\d+\.mlp\.experts\.)(gate_up_proj|down_proj)$", rest)
            if match is None:
                out["model." + rest] = tensor
            elif match[2] == "down_proj":  # fused [E, H, I] → one [H, I] Linear per expert
                for expert, weight in enumerate(tensor):
                    out[f"model.{match[1]}{expert}.down_proj.weight"] = weight.clone()
            else:  # fused [E, 2I, H] (gate rows first) → gate_proj and up_proj per expert
                for expert, weight in enumerate(tensor):
                    gate, up = weight.chunk(2, dim=0)
                    out[f"model.{match[1]}{expert}.gate_proj.weight"] = gate.clone()
                    out[f"model.{match[1]}{expert}.up_proj.weight"] = up.clone()
        else:
            out[name] = tensor
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def write_deepseek_ocr_checkpoint(directory: Path, seed: int = 0):
    """Write a tiny DeepSeek-OCR-format checkpoint; return the native model whose weights it holds."""
    from transformers import UnlimitedOcrForConditionalGeneration

    from deepsynth.models.resolver import unlimited_ocr_config_from_deepseek_vl_v2

    directory.mkdir(parents=True, exist_ok=True)
    config = unlimited_ocr_config_from_deepseek_vl_v2(V1_CONFIG)
    config.image_token_id = tiny.IMAGE_TOKEN_ID
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        native = UnlimitedOcrForConditionalGeneration(config)
    state = to_deepseek_ocr_state_dict(native.state_dict())
    # DeepSeek-OCR ships an unused CLIP patch embedding (its CLIP reads SAM features instead).
    clip_width = V1_CONFIG["vision_config"]["width"]["clip-l-14-224"]["width"]
    state["model.vision_model.embeddings.patch_embedding.weight"] = torch.randn(clip_width, 3, 14, 14)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(V1_CONFIG, indent=2), encoding="utf-8")
    (directory / "processor_config.json").write_text(json.dumps(V1_PROCESSOR_CONFIG, indent=2), encoding="utf-8")
    for file in tiny.TOKENIZER_DIR.iterdir():
        shutil.copy(file, directory / file.name)
    return native
