"""Adaptive-dropout pruning of Conformer speech recognisers: the library."""
