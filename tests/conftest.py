"""Project-wide test setup: our suite opts in to our own pytest plugin (broker and
KMS emulator fixtures, all named ``emq_*``), as a user's suite would."""

from __future__ import annotations

pytest_plugins = ["envelope_mq.testing"]
