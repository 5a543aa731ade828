"""Adaptation to each image: the encoder fine-tunes a few of the model's parameters on the
image and stores their quantised changes in the file (format version 4), which the decoder
adds to the integer model exactly (`params`: which parameters, `tune`: the fine-tuning,
`deltas`: quantising, coding and applying, `encoder`: the decision and both sides)."""
from __future__ import annotations

from .deltas import DeltaError
from .encoder import AdaptError, AdaptReport, adapt_model, adapted_model, float_model_for

__all__ = ["AdaptError", "AdaptReport", "DeltaError", "adapt_model", "adapted_model", "float_model_for"]
