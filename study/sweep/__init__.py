"""The sweep: experiment files, the driver, workers, Optuna storage and the status table."""
