"""Tiny random models of each supported family, built offline from config (real transformers classes)."""

from __future__ import annotations

import torch
from transformers import (
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    UnlimitedOcrConfig,
    UnlimitedOcrForConditionalGeneration,
)

IMAGE_TOKEN = 99
IMAGE_SIZE = 64

TEXT = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
    num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, n_shared_experts=1,
    num_experts_per_tok=2, mlp_layer_types=["dense", "sparse", "sparse"], bos_token_id=0, eos_token_id=1,
    max_position_embeddings=512,
)
SAM = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE, window_size=2,
           global_attn_indexes=[1], mlp_dim=32, output_channels=8)


def tiny_ocr2() -> DeepseekOcr2ForConditionalGeneration:
    config = DeepseekOcr2Config(
        image_token_id=IMAGE_TOKEN,
        text_config=TEXT,
        vision_config={
            "sam_config": {**SAM, "downsample_channels": [16, 32]},
            "encoder_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=64),
        },
    )
    torch.manual_seed(0)
    return DeepseekOcr2ForConditionalGeneration(config)


def tiny_ocr_v1() -> UnlimitedOcrForConditionalGeneration:
    config = UnlimitedOcrConfig(
        image_token_id=IMAGE_TOKEN,
        text_config={**TEXT, "sliding_window": 512},
        vision_config={
            "sam_config": {**SAM, "downsample_channels": [16, 32]},
            "encoder_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=IMAGE_SIZE, patch_size=16),
        },
    )
    torch.manual_seed(0)
    return UnlimitedOcrForConditionalGeneration(config)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))


def example_inputs(model: torch.nn.Module, family: str) -> dict[str, torch.Tensor]:
    """One batch with an image (OCR families) whose image-token count matches the vision output."""
    torch.manual_seed(1)
    text = torch.randint(2, 90, (1, 12))
    if family == "causal_lm":
        return {"input_ids": text, "labels": text.clone()}
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixel_values).pooler_output
    n_image = features[0].shape[0]
    input_ids = torch.cat([torch.tensor([[0]]), torch.full((1, n_image), IMAGE_TOKEN), text], dim=1)
    labels = input_ids.clone()
    labels[:, : 1 + n_image] = -100
    return {"input_ids": input_ids, "pixel_values": pixel_values, "labels": labels}


FAMILY_BUILDERS = {"deepseek_ocr2": tiny_ocr2, "deepseek_ocr": tiny_ocr_v1, "causal_lm": tiny_llama}


def lora_with_nonzero_b(model: torch.nn.Module, lora, family: str) -> torch.nn.Module:
    """``model`` with DeepSynth's LoRA, B initialised non-zero (seed 7) so that every LoRA tensor gets a gradient."""
    from deepsynth.training.targets import apply_lora, resolve_targets

    peft_model = apply_lora(model, resolve_targets(model, lora, family))
    torch.manual_seed(7)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    return peft_model
