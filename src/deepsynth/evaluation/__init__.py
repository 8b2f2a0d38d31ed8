"""Evaluation: before/after comparison of a model on held-out documents and its text metrics."""
