"""Evaluation: before/after scoring of a model, its text metrics, and a saved adapter folder read back."""
