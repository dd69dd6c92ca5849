"""The scheduler process: the loop, attempts, maintenance jobs, shutdown, metrics."""
