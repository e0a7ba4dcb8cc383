"""``envelope-mq bench``: the performance benchmark, side by side with plain pika.

Every figure comes from the run itself: throughput in interleaved rounds
beside plain pika, KMS economy, latency at a fixed rate, crypto beside the AWS
Encryption SDK and raw AES-GCM, the KMS emulator under load, a consumer's
memory, and sealed files. See docs/performance.md.
"""
