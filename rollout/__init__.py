"""The rollout stage: gates a candidate must pass, and the only code that moves MLflow aliases."""
