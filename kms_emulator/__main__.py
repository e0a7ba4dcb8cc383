"""``python -m envelope_mq.kms_emulator``: the same as ``envelope-mq kms-emulator``."""

from __future__ import annotations

import sys

from envelope_mq.kms_emulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
