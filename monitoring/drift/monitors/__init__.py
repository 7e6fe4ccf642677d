"""One module per drift monitor, each a class registered with ``register_monitor``; adding a
monitor is adding a module here (``monitoring.drift.monitor.monitors`` imports them all)."""
