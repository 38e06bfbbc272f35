"""/v1/chat (being built)."""

ROUTES: list = []
