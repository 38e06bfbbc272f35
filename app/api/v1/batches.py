"""/v1/batches (being built)."""

ROUTES: list = []
