"""``Emulator``: the KMS emulator as an object, for tests, the demo and the CLI."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal

from envelope_mq.kms_emulator.auth import Authenticator
from envelope_mq.kms_emulator.faults import Faults
from envelope_mq.kms_emulator.gateway import Gateway
from envelope_mq.kms_emulator.server import KmsHttpServer
from envelope_mq.kms_emulator.service import KmsService

__all__ = ["AuthMode", "Emulator"]

AuthMode = Literal["strict", "off"]


class Emulator:
    """A running emulator: ``with Emulator(seed=...) as emu: emu.endpoint``.

    Args:
        seed: a seed file path or mapping (principals, keys, aliases).
        auth: "strict" verifies every signature; "off" lets everything through.
        admin: serve the ``/admin/`` endpoints.
        data: a data directory (persistent), or None for in-memory state.
        host, port: where to listen; port 0 picks a free port.
        region_id: the region the emulator pretends to be.
        clock: wall clock for signature timestamps and key dates.
        clock_offset: seconds added to ``clock`` (negative: behind), so a test
            can make every client look skewed; also settable while running.
    """

    def __init__(
        self,
        *,
        seed: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        auth: AuthMode = "strict",
        admin: bool = True,
        data: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        region_id: str = "cn-hangzhou",
        clock: Callable[[], float] = time.time,
        clock_offset: float = 0.0,
    ) -> None:
        if auth not in ("strict", "off"):
            raise ValueError(f"auth must be 'strict' or 'off', not {auth!r}")
        self._seed = seed
        self._auth = auth
        self._admin = admin
        self._data = data
        self._address = (host, port)
        self._region_id = region_id
        self._base_clock = clock
        self.clock_offset = clock_offset
        self.faults = Faults()
        self._service: KmsService | None = None
        self._gateway: Gateway | None = None
        self._server: KmsHttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Emulator:
        """Open the service and start serving in a background thread."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        service = KmsService.open(
            self._data, seed=self._seed, region_id=self._region_id, clock=self.now
        )
        try:
            authenticator = (
                Authenticator(service.principal, clock=self.now)
                if self._auth == "strict"
                else None
            )
            gateway = Gateway(
                service,
                authenticator=authenticator,
                faults=self.faults,
                admin=self._admin,
                region_id=self._region_id,
            )
            server = KmsHttpServer(self._address, gateway)
        except BaseException:
            service.close()
            raise
        self._service, self._gateway, self._server = service, gateway, server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"kms-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release the data directory."""
        server, thread, service = self._server, self._thread, self._service
        self._server = self._thread = self._service = self._gateway = None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join()
        if service is not None:
            service.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def now(self) -> float:
        """The emulator's wall clock: ``clock()`` shifted by ``clock_offset``."""
        return self._base_clock() + self.clock_offset

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return str(self._running().server_address[0])

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when started with 0)."""
        return int(self._running().server_address[1])

    @property
    def endpoint(self) -> str:
        """``host:port``, what KMS_ENDPOINT and the SDKs' endpoint take."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.endpoint}"

    @property
    def service(self) -> KmsService:
        """The KmsService being served."""
        if self._service is None:
            raise RuntimeError("the emulator is not running")
        return self._service

    @property
    def request_count(self) -> dict[str, int]:
        """API requests answered since start (or the last reset), by Action."""
        return self._gateway.request_count if self._gateway else {}

    def reset_request_count(self) -> None:
        """Count requests from zero again."""
        if self._gateway is not None:
            self._gateway.reset_counts()

    def _running(self) -> KmsHttpServer:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server
