"""Liveness and readiness of a service, as the service itself reports them.

The services update a :class:`HealthState` as things happen (broker connection
up or lost, KMS answering or not, the main loop turning); the HTTP server only
reads it. Everything here is thread-safe and cheap: a dict write under a lock.

- **live**: every loop that beats (:meth:`HealthState.beat`) did so within
  ``stall_after`` seconds. A stuck loop is the one thing a restart cures.
- **ready**: at least one component was reported and every reported component
  is ready; a component that is not may still pass through its fallback (for
  KMS: a valid cached data key lets messages flow while KMS is unreachable).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["HealthReport", "HealthState"]

Clock = Callable[[], float]


@dataclass(frozen=True)
class HealthReport:
    """The verdict and one line per check (``"ok"`` or why not)."""

    ok: bool
    checks: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The body the health endpoints answer with."""
        return {"status": "ok" if self.ok else "fail", "checks": dict(self.checks)}


class HealthState:
    """Thread-safe liveness beats and readiness flags, fed by the services."""

    def __init__(self, *, stall_after: float = 60.0, clock: Clock = time.monotonic):
        if not stall_after > 0:
            raise ValueError("stall_after must be positive")
        self._stall_after = stall_after
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self._ready: dict[str, tuple[bool, str]] = {}
        self._fallbacks: dict[str, list[Callable[[], bool]]] = {}

    def beat(self, loop: str) -> None:
        """``loop`` is turning; it must beat again within ``stall_after`` seconds."""
        now = self._clock()
        with self._lock:
            self._beats[loop] = now

    def set_ready(self, component: str, ready: bool, detail: str = "") -> None:
        """Report ``component`` as ready or not (``detail`` says why; no secrets)."""
        with self._lock:
            self._ready[component] = (ready, detail)

    def add_fallback(self, component: str, check: Callable[[], bool]) -> None:
        """Count ``component`` as ready whenever ``check()`` is true, whatever it said.

        ``check`` runs at each readiness probe, outside the lock; it must be cheap
        and must not raise.
        """
        with self._lock:
            self._fallbacks.setdefault(component, []).append(check)

    def forget(self, name: str) -> None:
        """Drop a loop's beats and a component's flag (it stopped on purpose)."""
        with self._lock:
            self._beats.pop(name, None)
            self._ready.pop(name, None)

    def liveness(self) -> HealthReport:
        """Live unless a beating loop has been silent for ``stall_after`` seconds."""
        now = self._clock()
        with self._lock:
            beats = dict(self._beats)
        checks = {
            loop: "ok"
            if now - last < self._stall_after
            else f"no beat for {now - last:.0f} s"
            for loop, last in sorted(beats.items())
        }
        return HealthReport(all(v == "ok" for v in checks.values()), checks)

    def readiness(self) -> HealthReport:
        """Ready when something was reported and everything reported is ready."""
        with self._lock:
            flags = dict(self._ready)
            fallbacks = {k: list(v) for k, v in self._fallbacks.items()}
        checks: dict[str, str] = {}
        for component, (ready, detail) in sorted(flags.items()):
            if ready:
                checks[component] = "ok"
            elif any(check() for check in fallbacks.get(component, ())):
                checks[component] = f"ok (fallback; {detail or 'not ready'})"
            else:
                checks[component] = detail or "not ready"
        if not checks:
            return HealthReport(False, {"service": "starting: nothing reported yet"})
        ok = all(v.startswith("ok") for v in checks.values())
        return HealthReport(ok, checks)
