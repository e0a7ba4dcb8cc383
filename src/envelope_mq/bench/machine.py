"""The machine a run measured: cores, CPU, memory, Python, load."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["describe_machine"]


def _proc_field(path: str, name: str) -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def describe_machine() -> dict[str, str]:
    """What a reader needs to compare this run's figures with another's."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    if memory and memory.endswith(" kB"):
        memory = f"{int(memory[:-3]) / 1024 / 1024:.1f} GiB"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "cores (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "memory": memory or "unknown",
        "Python": platform.python_version(),
        "OS": f"{platform.system()} {platform.release()}",
        "load average at start (1, 5, 15 min)": load,
    }
