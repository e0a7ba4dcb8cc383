"""The envelope core shared by producer and consumer: wire format, AES-256-GCM,
the KMS client and its key caches. It imports neither producer nor consumer."""
