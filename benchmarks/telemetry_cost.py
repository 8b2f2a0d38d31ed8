"""Cost of the MoE telemetry hooks (deepsynth.training.moe.install_moe) on one training step.

Embedded model, tiny_data LoRA, 2 cached examples, 1 thread; 25 alternating pairs of steps with and
without the hooks; CPU milliseconds per step (min / median / max).

    python benchmarks/telemetry_cost.py
"""
import time, statistics, torch
torch.set_num_threads(1)
from deepsynth.models.loading import load_model_and_processor
from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import build_example, DataCollator
from deepsynth.training.feature_cache import precompute_image_features, CachedFeatureCollator
from deepsynth.training.lora_config import get_lora_preset
from deepsynth.training.targets import apply_lora, resolve_targets
from deepsynth.training.moe import install_moe
l = load_model_and_processor(None)
model = apply_lora(l.model, resolve_targets(l.model, get_lora_preset("tiny_data"), l.family))
rows = load_sample_dataset("train", max_samples=2)
ex = [build_example(l.processor, r["image"], r["summary"]) for r in rows]
precompute_image_features(model, ex)
batch = CachedFeatureCollator(DataCollator(l.processor))(ex)
model.train()
def step():
    t = time.process_time(); model.zero_grad(); model(**batch).loss.backward(); return time.process_time() - t
for _ in range(3): step()
res = {"plain": [], "telemetry": []}
for i in range(25):
    for mode in (("plain", "telemetry") if i % 2 == 0 else ("telemetry", "plain")):
        moe = install_moe(model, l.family) if mode == "telemetry" else None
        res[mode].append(step())
        if moe: moe.remove()
for k, v in res.items(): print(k, "CPU-ms min/med/max", round(min(v)*1e3), round(statistics.median(v)*1e3), round(max(v)*1e3))
