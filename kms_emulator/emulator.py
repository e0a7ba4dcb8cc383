"""``Emulator``: the KMS emulator as an object, for tests, the demo and the CLI."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from envelope_mq.kms_emulator.admin import AdminAccess
from envelope_mq.kms_emulator.auth import Authenticator
from envelope_mq.kms_emulator.faults import Faults
from envelope_mq.kms_emulator.gateway import Gateway
from envelope_mq.kms_emulator.instance import (
    DEFAULT_INSTANCE_QPS,
    INSTANCE_ID,
    instance_host,
)
from envelope_mq.kms_emulator.metadata import MetadataServer
from envelope_mq.kms_emulator.policy import Principal
from envelope_mq.kms_emulator.quota import QpsLimiter
from envelope_mq.kms_emulator.server import KmsHttpServer
from envelope_mq.kms_emulator.service import KmsService
from envelope_mq.kms_emulator.sts import StsService
from envelope_mq.kms_emulator.tls import TlsFiles, generate, server_context
from envelope_mq.kms_emulator.tunnel import ConnectTunnel

__all__ = ["AuthMode", "Emulator"]

AuthMode = Literal["strict", "off"]


class Emulator:
    """A running emulator: ``with Emulator(seed=...) as emu: emu.endpoint``.

    Args:
        seed: a seed file path or mapping (principals, keys, aliases).
        auth: "strict" verifies every signature; "off" lets everything through.
        admin: serve the ``/admin/`` endpoints, to callers presenting
            ``Authorization: Bearer <admin_token>`` with a ``Host`` of the
            emulator's own (its address, the loopback names when bound there
            or to every interface, ``tls_names`` and ``admin_hosts``).
        admin_token: that token; None makes a random one (``emu.admin_token``).
        sts_lifetime: seconds every STS credential lives, whatever its
            DurationSeconds (tests of expiry and refresh); None: as requested.
        qps_quota: the account's quota of symmetric cryptographic operations
            per second (the shared gateway's is 1,000); over it, 429
            ``Rejected.Throttling``. None: unmetered. ``quota_clock`` is the
            meters' monotonic clock (tests freeze it).
        instance_id: act as the dedicated gateway of this KMS 3.0 instance
            (``kst-...``): HTTPS only (``tls`` is implied), a certificate for
            ``<instance_id>.cryptoservice.kms.aliyuncs.com``, data-plane
            operations only, an instance quota of ``instance_qps`` (the
            instance spec: 1,000 by default), and a CONNECT proxy at
            ``gateway_proxy`` that resolves the instance host name to it.
        ecs_role: serve the ECS metadata service's RAM-role credentials
            (IMDSv2) for this seeded role on ``ecs_metadata_address``.
        data: a data directory (persistent), or None for in-memory state.
        host, port: where to listen; port 0 picks a free port.
        region_id: the region the emulator pretends to be.
        clock: wall clock for signature timestamps and key dates.
        clock_offset: seconds added to ``clock`` (negative: behind), so a test
            can make every client look skewed; also settable while running.
        tls: serve HTTPS. With ``tls_cert``/``tls_key`` those PEM files are
            used; otherwise a fresh CA and a certificate for the loopback
            names and ``tls_names`` are generated, the CA's certificate is at
            ``ca_file`` (and copied to ``tls_ca_out`` when given).
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
        tls: bool = False,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_names: Sequence[str] = (),
        tls_ca_out: str | os.PathLike[str] | None = None,
        admin_token: str | None = None,
        admin_hosts: Sequence[str] = (),
        sts_lifetime: float | None = None,
        qps_quota: float | None = None,
        quota_clock: Callable[[], float] = time.monotonic,
        instance_id: str | None = None,
        instance_qps: float = DEFAULT_INSTANCE_QPS,
        ecs_role: str | None = None,
        ecs_metadata_address: tuple[str, int] = ("100.100.100.200", 80),
    ) -> None:
        if auth not in ("strict", "off"):
            raise ValueError(f"auth must be 'strict' or 'off', not {auth!r}")
        self._seed = seed
        self._auth = auth
        self._admin = admin
        self._data = data
        self._address = (host, port)
        self._region_id = region_id
        if instance_id is not None:
            if not INSTANCE_ID.fullmatch(instance_id):
                raise ValueError(f"not a KMS instance id (kst-...): {instance_id!r}")
            tls = True  # a dedicated gateway speaks HTTPS only
            tls_names = (*tls_names, instance_host(instance_id))
        self._instance_id = instance_id
        self._ecs_role = ecs_role
        self._ecs_address = ecs_metadata_address
        self._metadata: MetadataServer | None = None
        self._tunnel: ConnectTunnel | None = None
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if not tls and (tls_cert is not None or tls_ca_out is not None or tls_names):
            raise ValueError("TLS options need tls=True")
        if admin_token is not None and len(admin_token) < 16:
            raise ValueError("admin_token must have at least 16 characters")
        self._admin_token = admin_token or secrets.token_urlsafe(24)
        self._admin_hosts = tuple(admin_hosts)
        self._sts_lifetime = sts_lifetime
        quotas = [QpsLimiter(qps_quota, clock=quota_clock)] if qps_quota else []
        if instance_id is not None:
            quotas.append(QpsLimiter(instance_qps, clock=quota_clock))
        self._quotas = tuple(quotas)
        self._sts: StsService | None = None
        self._tls = tls
        self._tls_given = (
            TlsFiles(Path(tls_cert), Path(tls_key))
            if tls_cert is not None and tls_key is not None
            else None
        )
        self._tls_names = (host, *tls_names)
        self._tls_ca_out = Path(tls_ca_out) if tls_ca_out is not None else None
        self._tls_files: TlsFiles | None = None
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
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
            sts = StsService(
                service.seed, service.account_id, self.now, lifetime=self._sts_lifetime
            )

            def lookup(access_key_id: str) -> Principal | None:
                return service.principal(access_key_id) or sts.principal(access_key_id)

            authenticator = (
                Authenticator(lookup, clock=self.now, tokens=sts.holder)
                if self._auth == "strict"
                else None
            )
            gateway = Gateway(
                service,
                authenticator=authenticator,
                faults=self.faults,
                admin=self._admin,
                region_id=self._region_id,
                sts=sts,
                quotas=self._quotas,
                instance_id=self._instance_id,
            )
            server = KmsHttpServer(self._address, gateway, self._ssl_context())
        except BaseException:
            service.close()
            self._drop_tls_dir()
            raise
        gateway.admin_access = AdminAccess.for_names(
            self._admin_token,
            self._own_names(str(server.server_address[0])),
            int(server.server_address[1]),
            "https" if self._tls else "http",
        )
        self._service, self._gateway, self._server = service, gateway, server
        self._sts = sts
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"kms-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        try:  # extra listeners, once stop() can undo everything
            self._start_side_servers(sts, server)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_side_servers(self, sts: StsService, server: KmsHttpServer) -> None:
        if self._ecs_role is not None:
            role = sts.role_by_name(self._ecs_role)
            if role is None:
                raise ValueError(f"ecs_role {self._ecs_role!r} is not a seeded role")
            self._metadata = MetadataServer(self._ecs_address, sts, role)
        if self._instance_id is not None:
            self._tunnel = ConnectTunnel(
                instance_host(self._instance_id),
                (str(server.server_address[0]), int(server.server_address[1])),
            )

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
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._metadata is not None:
            self._metadata.stop()
            self._metadata = None
        self._drop_tls_dir()

    def _own_names(self, bound: str) -> list[str]:
        names = [bound, *self._tls_names[1:], *self._admin_hosts]
        try:
            address = ipaddress.ip_address(bound)
        except ValueError:
            address = None
        if address is None or address.is_loopback or address.is_unspecified:
            names += ["127.0.0.1", "localhost", "::1"]
        return names

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self._tls:
            return None
        files = self._tls_given
        if files is None:
            self._tls_dir = tempfile.TemporaryDirectory(prefix="kms-emulator-tls-")
            files = generate(Path(self._tls_dir.name), self._tls_names)
            if self._tls_ca_out is not None and files.ca_file is not None:
                shutil.copyfile(files.ca_file, self._tls_ca_out)
        self._tls_files = files
        return server_context(files)

    def _drop_tls_dir(self) -> None:
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
        self._tls_dir = self._tls_files = None

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
        """``http://host:port``, or ``https://`` with TLS: what KMS_ENDPOINT takes."""
        return f"{self.scheme}://{self.endpoint}"

    @property
    def scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "https" if self._tls else "http"

    @property
    def instance_host(self) -> str | None:
        """``<instance-id>.cryptoservice.kms.aliyuncs.com`` in gateway mode."""
        return instance_host(self._instance_id) if self._instance_id else None

    @property
    def gateway_proxy(self) -> str | None:
        """The CONNECT proxy (``http://127.0.0.1:<port>``) that resolves
        :attr:`instance_host` to this emulator; None in shared mode."""
        return self._tunnel.url if self._tunnel is not None else None

    @property
    def sts(self) -> StsService:
        """The STS (2015-04-01) served on the same port, for the seed's roles."""
        if self._sts is None:
            raise RuntimeError("the emulator is not running")
        return self._sts

    def credentials_uri(self, role_name: str) -> str:
        """What ALIBABA_CLOUD_CREDENTIALS_URI takes for a role with credentials_uri."""
        return f"{self.url}/sts/credentials/{role_name}?token={self.sts.uri_token}"

    @property
    def admin_token(self) -> str:
        """The bearer token ``/admin/`` requires."""
        return self._admin_token

    @property
    def tls_files(self) -> TlsFiles | None:
        """The certificate, key and (generated) CA files served; None without TLS."""
        self._running()
        return self._tls_files

    @property
    def ca_file(self) -> Path | None:
        """The generated CA's certificate (PEM), for clients to trust; else None.

        It is removed when the emulator stops (``tls_ca_out`` keeps a copy).
        """
        self._running()
        files = self._tls_files
        if files is None or files.ca_file is None:
            return None
        return self._tls_ca_out or files.ca_file

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
