"""kms_emulator."""
