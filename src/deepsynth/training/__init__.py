"""Training: the run, its config and presets, LoRA targets, MoE knobs, feature cache, schedules and recommendations."""
