"""The broker's own CPU time, when the broker runs on this machine.

Rates on a shared, noisy machine swing by a factor of two between rounds;
the CPU seconds the broker spends per message swing far less, because a
burst of someone else's load slows the broker down without making it do
more work. The header-layout section reports both. The broker process is
found by the TCP port it listens on (``/proc/net/tcp``, then the process
holding that socket); on another host, or without permission to read its
``/proc`` entries, there is no figure and the section says so.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BrokerCpu", "find_broker_cpu"]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


class BrokerCpu:
    """Reads one process's user + system CPU seconds from ``/proc/<pid>/stat``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def seconds(self) -> float:
        """CPU seconds the process has used so far (all its threads)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text(encoding="ascii")
        # Fields after the command name, which may itself contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == _LISTEN
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    return inodes


def find_broker_cpu(host: str, port: int) -> BrokerCpu | str:
    """The local process listening on ``port``, or why there is none."""
    if host not in ("localhost", "127.0.0.1", "::1"):
        return f"the broker is on {host}, not this machine"
    inodes = _listening_inodes(port)
    if not inodes:
        return f"no process on this machine listens on port {port}"
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return BrokerCpu(int(entry.name))
        except OSError:
            continue  # another user's process, or one that just ended
    return f"the process listening on port {port} cannot be read (permissions)"
