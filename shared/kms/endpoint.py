"""A KMS endpoint as configured: scheme and host, how errors name it, reaching it."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

from envelope_mq.shared.errors import ConfigError, KmsUnavailableError
from envelope_mq.shared.kms.failures import (
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    HINTS,
    TLS_FAILED,
    TLS_UNTRUSTED,
)

__all__ = ["parse_endpoint", "reach", "where"]

_PORTS = {"http": 80, "https": 443}


def parse_endpoint(endpoint: str, name: str = "KMS_ENDPOINT") -> tuple[str, str]:
    """Split an endpoint into (scheme, host[:port]).

    ``https://`` and ``http://`` are taken as written; a bare ``host[:port]``
    means TLS, except on a loopback address (the local emulator), where it
    means plain HTTP: the traffic never leaves the machine (kms-api.md §8).
    """
    scheme, sep, rest = endpoint.strip().partition("://")
    if sep:
        protocol, host = scheme.lower(), rest.rstrip("/")
    else:
        host = endpoint.strip().rstrip("/")
        protocol = "http" if _is_loopback(host) else "https"
    if protocol not in _PORTS or not host or "/" in host:
        raise ConfigError(
            f"{name} must be host:port, http://host:port or https://host[:port]"
        )
    return protocol, host


def where(scheme: str, host: str) -> str:
    """``scheme://host:port``, the port written out, for error messages."""
    port = urlsplit(f"//{host}").port
    return f"{scheme}://{host}" if port else f"{scheme}://{host}:{_PORTS[scheme]}"


def _is_loopback(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def reach(
    scheme: str,
    host: str,
    *,
    ca_file: str | None = None,
    also_system_cas: bool = False,
    timeout: float = 5.0,
) -> None:
    """Open a connection to the endpoint (TLS too, verified) and close it.

    Proves what a typo in KMS_ENDPOINT or a missing CA breaks: the name
    resolves, something listens, and for https its certificate is trusted.
    It sends no request, so it costs no quota and needs no permission.
    ``ca_file`` is trusted instead of the system's CAs, or beside them with
    ``also_system_cas``, as the client that will call KMS trusts them.

    Raises:
        KmsUnavailableError: naming ``scheme://host:port``, with the code a
            KMS call would have failed with (SDK.ConnectionFailed...).
    """
    parts = urlsplit(f"//{host}")
    name, port = parts.hostname or host, parts.port or _PORTS[scheme]
    try:
        with socket.create_connection((name, port), timeout=timeout) as sock:
            if scheme == "https":
                context = ssl.create_default_context(cafile=ca_file)
                if ca_file is not None and also_system_cas:
                    context.load_default_certs()
                with context.wrap_socket(sock, server_hostname=name):
                    pass
    except ssl.SSLCertVerificationError as exc:
        raise _unreachable(scheme, host, TLS_UNTRUSTED) from exc
    except ssl.SSLError as exc:
        raise _unreachable(scheme, host, TLS_FAILED) from exc
    except TimeoutError as exc:
        raise _unreachable(scheme, host, CONNECT_TIMEOUT) from exc
    except OSError as exc:  # refused, unreachable, no such host
        raise _unreachable(scheme, host, CONNECT_FAILED) from exc


def _unreachable(scheme: str, host: str, code: str) -> KmsUnavailableError:
    return KmsUnavailableError(
        f"cannot reach KMS at {where(scheme, host)}: {code}{HINTS.get(code, '')}",
        code=code,
    )
