"""Composition roots that wire producer, consumer and the KMS emulator together:
the demo, the benchmark and the pytest plugin. Nothing else imports this package."""
