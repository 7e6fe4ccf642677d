"""Online services on Ray Serve: inference, feedback, review and rollout."""
