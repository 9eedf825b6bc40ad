"""Training: a run's state on disk and resume, fine-tuning."""
