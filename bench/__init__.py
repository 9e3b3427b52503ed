"""The performance figures of checkpoint-worker against baselines: `python -m bench`."""
