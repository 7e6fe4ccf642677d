"""The local stack without Docker: Kafka (KRaft), MLflow, a Ray head and the monitor, as processes."""
