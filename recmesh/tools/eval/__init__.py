"""Offline evaluation: datasets, the fixed protocol, baselines and the learned interest model."""
