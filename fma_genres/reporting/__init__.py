"""Reporting: Weights & Biases, prediction plots."""
