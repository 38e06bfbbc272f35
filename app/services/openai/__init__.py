"""OpenAI's API over the same services: request shapes in, OpenAI's objects out. No Flask here: the resources
under app/api/v1 are thin, and every request on this surface is a job (or batch, or file) of the core."""
