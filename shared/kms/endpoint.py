"""A KMS endpoint as configured: scheme and host, and how errors name it."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from envelope_mq.shared.errors import ConfigError

__all__ = ["parse_endpoint", "where"]

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
