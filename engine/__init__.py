"""The autoresearch engine: goal-file spec, experiment runner, search driver and CLI."""
