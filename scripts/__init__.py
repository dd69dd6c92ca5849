"""Command-line tools that run against the service: integration and crash checks."""
