"""DeepSynth: LoRA adaptation of DeepSeek-OCR-family MoE models from a handful of documents."""

__version__ = "0.1.0"
