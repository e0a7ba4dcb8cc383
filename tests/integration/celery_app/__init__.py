"""A small Celery app for the integration tests, configured from EMQ_CELERY_* variables.

The test starts ``celery -A tests.integration.celery_app worker`` with the
broker URL, the queue, the emulator's endpoint and both principals in its
environment; the test process builds the same app to send tasks.
"""
