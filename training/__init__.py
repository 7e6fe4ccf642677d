"""Training: snapshots of the labeled store, Ray Train fine-tuning, evaluation, registration."""
