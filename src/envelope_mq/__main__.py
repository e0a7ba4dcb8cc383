"""``python -m envelope_mq`` runs the ``envelope-mq`` command."""

from __future__ import annotations

import sys

from envelope_mq.shared.cli import main

sys.exit(main())
