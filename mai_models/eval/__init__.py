"""Evaluation: metrics, baselines, the local arena and its ratings."""
