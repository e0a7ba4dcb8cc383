"""What /proc says about this test process's own sockets (Linux only)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def sockets_to(port: int) -> int:
    """TCP sockets this process holds open to ``port`` on some host."""
    mine: set[str] = set()
    for fd in Path("/proc/self/fd").iterdir():
        # An fd may be closed by another thread between listing and reading.
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                mine.add(link[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                count += remote_port == port and fields[9] in mine
    return count
