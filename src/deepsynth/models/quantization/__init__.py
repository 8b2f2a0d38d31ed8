"""QLoRA: hold a base model's weights in 4 or 8 bits (bitsandbytes) and report how much of it is.

What is quantized, and how:

* every ``nn.Linear`` of the language model — through transformers' own ``BitsAndBytesConfig``
  path (``from_pretrained(..., quantization_config=...)``): NF4 with double quantization for
  ``"4bit"``, LLM.int8 (``Linear8bitLt``) for ``"8bit"``. The vision encoder, projector, router
  and ``lm_head`` stay in full precision (``llm_int8_skip_modules``); embeddings and norms are not
  ``nn.Linear`` and stay as they are too;
* the fused routed experts (3-D ``gate_up_proj`` / ``down_proj`` parameters, most of DeepSeek-OCR's
  weights), which bitsandbytes' ``nn.Linear`` replacement does not see: 4-bit as each is read from
  its shard (:func:`.load.fused_experts_quantized_on_load`: NF4, double quantization, bitsandbytes'
  dequantizing parametrization), never held in full precision; 8-bit, after the load, through
  :class:`.parametrizations.Int8RowwiseParametrization`, a small parametrization of ours over bitsandbytes' int8
  row-wise functions (bitsandbytes has no 8-bit counterpart of ``replace_parameter_4bit``).
  Both dequantize on access, so PEFT's routed-expert LoRA (``target_parameters``) stacks on top.

A model built from a config (the embedded model, benchmarks at real dimensions) has no checkpoint
to quantize while loading: it goes through the same transformers path with its in-memory
``state_dict`` (``from_pretrained(None, config=..., state_dict=...)``).

Compute dtype: the run's dtype — bf16 on GPUs that support it, fp32 on the CPU; the fused experts
dequantize to it. Unlike ``peft.prepare_model_for_kbit_training``, nothing unquantized is cast to
fp32 (:func:`.load.prepare_quantized`).

bitsandbytes is the optional extra ``[qlora]``; :func:`.load.require_bitsandbytes` fails early with the
install command when it is missing.

The modules, by role: :mod:`.load` (the bitsandbytes check, the load-time configuration and the
scoped 4-bit quantizer), :mod:`.parametrizations` (the dequantizing parametrizations of the fused
experts, and the PEFT fixes that let LoRA stack on them), :mod:`.dequantize` (back to full
precision, for merging and adapter injection), :mod:`.report` (what is held in how many bits).
"""
