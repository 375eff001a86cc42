"""MLflow: the store and its experiments, what a trial run records, resume bookkeeping, dense-run reuse."""
