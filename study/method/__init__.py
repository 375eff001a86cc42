"""The method and its baselines: adaptive dropout, physical pruning, magnitude pruning and small-dense sizing."""
