"""Celery workers and everything that needs torch."""
