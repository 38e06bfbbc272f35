"""/v1/finetuning (being built)."""

ROUTES: list = []
