"""Tiles to models and verdicts: dataset, SSCNet models, training, evaluation."""
