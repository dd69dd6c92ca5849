"""The HTTP layer: blueprints, request parsing, error responses; the only layer that knows HTTP."""
