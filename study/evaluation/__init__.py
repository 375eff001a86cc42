"""Measuring a final model: decoding, word and character error rates, parameters, FLOPs and latency."""
