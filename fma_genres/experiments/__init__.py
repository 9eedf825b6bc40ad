"""experiments.py's library: an Optuna study's shared storage, repeat's summary over seeds."""
