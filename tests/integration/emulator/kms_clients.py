"""One calling convention over the three official client flavours, plus raw HTTP.

Tests say ``client.call("Encrypt", KeyId=..., EncryptionContext={...})`` with
natural Python values; each flavour turns them into what its SDK takes (the old
SDK wants strings, the new one typed model fields) and every API error comes back
as the same ``KmsCallError``, whichever SDK raised it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import importlib
import json
import re
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from envelope_mq.kms_emulator import Emulator

FLAVOURS = ("old-sdk-v1", "new-sdk-acs3", "new-sdk-v1")


class KmsCallError(Exception):
    """An error answer of the KMS API, as any of the clients reported it."""

    def __init__(self, status: int, code: str, message: str, request_id: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class KmsTransportError(Exception):
    """No answer at all: refused, reset, timed out."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)  # STS only


class KmsClient(Protocol):
    flavour: str

    def call(self, action: str, **params: Any) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _as_text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)  # the old SDK passes the caller's text through
    return str(value)  # bools as True/False, as both Python SDKs send them


class OldSdkClient:
    """aliyun-python-sdk-kms on aliyun-python-sdk-core (AcsClient, v1 signatures)."""

    flavour = "old-sdk-v1"

    def __init__(
        self,
        endpoint: str,
        creds: Credentials,
        region: str,
        protocol: str,
        *,
        ca: str | None = None,
    ) -> None:
        from aliyunsdkcore.auth.credentials import StsTokenCredential
        from aliyunsdkcore.client import AcsClient

        # verify: a CA bundle path, or True (the system's); never None, with
        # which the SDK would read ALIBABA_CLOUD_CA_BUNDLE at every request.
        if creds.security_token:
            self._client = AcsClient(
                region_id=region,
                timeout=10,
                verify=ca or True,
                credential=StsTokenCredential(
                    creds.access_key_id, creds.access_key_secret, creds.security_token
                ),
            )
        else:
            self._client = AcsClient(
                creds.access_key_id,
                creds.access_key_secret,
                region,
                timeout=10,
                verify=ca or True,
            )
        self._endpoint = endpoint
        self._protocol = protocol

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        from aliyunsdkcore.acs_exception.exceptions import (
            ClientException,
            ServerException,
        )
        from aliyunsdkcore.http import protocol_type

        module = importlib.import_module(
            f"aliyunsdkkms.request.v20160120.{action}Request"
        )
        request = getattr(module, f"{action}Request")()
        request.set_endpoint(self._endpoint)
        # The SDK tests `protocol is PT.HTTPS`: only its own constant turns TLS on.
        request.set_protocol_type(
            protocol_type.HTTPS if self._protocol == "https" else protocol_type.HTTP
        )
        for name, value in params.items():
            getattr(request, f"set_{name}")(_as_text(value))
        try:
            body = self._client.do_action_with_exception(request)
        except ServerException as exc:
            raise KmsCallError(
                exc.get_http_status(),
                exc.get_error_code(),
                exc.get_error_msg(),
                exc.get_request_id(),
            ) from exc
        except ClientException as exc:
            raise KmsTransportError(str(exc)) from exc
        result: dict[str, Any] = json.loads(body)
        return result

    def close(self) -> None:
        """Close the AcsClient's pooled keep-alive connections."""
        self._client.session.close()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class NewSdkClient:
    """alibabacloud-kms20160120 (tea): ACS3 by default, v1 with signature 'v2'."""

    def __init__(
        self,
        endpoint: str,
        creds: Credentials,
        region: str,
        protocol: str,
        *,
        v1: bool = False,
        ca: str | None = None,
        https_proxy: str | None = None,
    ) -> None:
        from alibabacloud_kms20160120.client import Client
        from alibabacloud_tea_openapi.models import Config

        config = Config(
            access_key_id=creds.access_key_id,
            access_key_secret=creds.access_key_secret,
            security_token=creds.security_token,
            region_id=region,
            endpoint=endpoint,
            protocol=protocol,
            read_timeout=10000,
            connect_timeout=5000,
            # The PEM file of CAs to trust over https (both sync and async forms).
            ca=ca,
            https_proxy=https_proxy,
        )
        if v1:
            config.signature_algorithm = "v2"
        self.flavour = "new-sdk-v1" if v1 else "new-sdk-acs3"
        self._client = Client(config)

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        from alibabacloud_kms20160120 import models
        from Tea.exceptions import TeaException

        model = getattr(models, f"{action}Request", None)
        kwargs = {}
        for name, value in params.items():
            # Model fields typed str (Filters, Tags) take JSON text; contexts
            # are dicts the SDK serialises itself.
            if isinstance(value, list):
                value = json.dumps(value)
            kwargs[_snake(name)] = value
        method = getattr(self._client, _snake(action))
        try:
            response = method(model(**kwargs)) if model is not None else method()
        except TeaException as exc:
            status = getattr(exc, "status_code", None)
            if status is None:
                raise KmsTransportError(str(exc)) from exc
            data = exc.data if isinstance(exc.data, dict) else {}
            raise KmsCallError(
                int(status),
                str(exc.code),
                str(data.get("Message", "")),
                str(data.get("RequestId", "")),
            ) from exc
        except OSError as exc:
            raise KmsTransportError(str(exc)) from exc
        result: dict[str, Any] = response.body.to_map()
        return result

    def close(self) -> None:
        """Nothing to do: tea pools connections per endpoint, process-wide."""


def make_client(
    flavour: str,
    endpoint: str,
    creds: Credentials,
    region: str,
    protocol: str,
    ca: str | None = None,
) -> KmsClient:
    """A client of one flavour (see FLAVOURS); ``ca``: a PEM CA file for https."""
    if flavour == "old-sdk-v1":
        return OldSdkClient(endpoint, creds, region, protocol, ca=ca)
    if flavour == "new-sdk-acs3":
        return NewSdkClient(endpoint, creds, region, protocol, ca=ca)
    if flavour == "new-sdk-v1":
        return NewSdkClient(endpoint, creds, region, protocol, v1=True, ca=ca)
    raise ValueError(flavour)


def admin_seed(
    creds: Credentials, key_id: str | None = None, alias: str = ""
) -> dict[str, Any]:
    """A seed with one all-rights principal and, when ``key_id`` is given, one key."""
    seed: dict[str, Any] = {
        "principals": [
            {
                "access_key_id": creds.access_key_id,
                "access_key_secret": creds.access_key_secret,
                "actions": ["*"],
                "keys": ["*"],
            }
        ]
    }
    if key_id is not None:
        seed["keys"] = [{"key_id": key_id, "aliases": [alias] if alias else []}]
    return seed


def unique_alias(prefix: str = "alias/contract-") -> str:
    """An alias name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --- raw HTTP: for what no SDK can be made to send --------------------------------


def percent(text: str) -> str:
    return quote(text, safe="~")


def utc_timestamp(offset_seconds: float = 0.0) -> str:
    return time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_seconds)
    )


def v1_signed_params(
    action: str,
    params: Mapping[str, str],
    creds: Credentials,
    *,
    method: str = "POST",
    nonce: str | None = None,
    timestamp: str | None = None,
) -> dict[str, str]:
    """``params`` plus the v1 common parameters and a valid Signature."""
    full = {
        **params,
        "Action": action,
        "Version": "2016-01-20",
        "Format": "JSON",
        "AccessKeyId": creds.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": nonce or uuid.uuid4().hex,
        "Timestamp": timestamp or utc_timestamp(),
    }
    canonical = "&".join(f"{percent(k)}={percent(v)}" for k, v in sorted(full.items()))
    to_sign = f"{method}&%2F&{percent(canonical)}"
    secret = f"{creds.access_key_secret}&".encode()
    mac = hmac.new(secret, to_sign.encode(), hashlib.sha1).digest()
    return {**full, "Signature": base64.b64encode(mac).decode()}


def acs3_headers(
    action: str,
    query: Mapping[str, str],
    body: bytes,
    creds: Credentials,
    *,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers of an ACS3-HMAC-SHA256 request, as the tea SDK signs them."""
    headers = {
        "x-acs-action": action,
        "x-acs-version": "2016-01-20",
        "x-acs-date": utc_timestamp(),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    names = sorted(headers)
    canonical_query = "&".join(
        f"{percent(k)}={percent(v)}" for k, v in sorted(query.items())
    )
    canonical = "\n".join(
        [
            "POST",
            "/",
            canonical_query,
            "".join(f"{n}:{headers[n]}\n" for n in names),
            ";".join(names),
            headers["x-acs-content-sha256"],
        ]
    )
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    signature = hmac.new(
        creds.access_key_secret.encode(), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={creds.access_key_id},"
        f"SignedHeaders={';'.join(names)},Signature={signature}"
    )
    return headers


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


class RawHttp:
    """A keep-alive HTTP connection for hand-made requests."""

    def __init__(
        self,
        endpoint: str,
        *,
        tls: bool = False,
        timeout: float = 10,
        ca: str | None = None,
    ) -> None:
        host, _, port = endpoint.partition(":")
        number = int(port) if port else None
        self.admin_token = ""  # sent by the admin tests' helper
        self._conn: http.client.HTTPConnection
        if tls:
            context = ssl.create_default_context(cafile=ca)
            self._conn = http.client.HTTPSConnection(
                host, number, timeout=timeout, context=context
            )
        else:
            self._conn = http.client.HTTPConnection(host, number, timeout=timeout)

    def send(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        self._conn.request(method, target, body=body, headers=all_headers)
        response = self._conn.getresponse()
        data = response.read()
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, data
        )

    def v1(
        self, action: str, params: Mapping[str, str], creds: Credentials, **sign: Any
    ) -> RawResponse:
        """A v1-signed POST with every parameter in the query, as the old SDK does."""
        signed = v1_signed_params(action, params, creds, **sign)
        return self.send("POST", "/?" + urlencode(signed, quote_via=quote))

    def close(self) -> None:
        self._conn.close()


# --- what the contract fixtures hand to tests ----------------------------------

NewKey = Callable[..., str]
OpenClient = Callable[..., KmsClient]


@dataclass
class Target:
    """A KMS endpoint and what the contract tests need to use it."""

    kind: str  # "emulator" or "real"
    endpoint: str
    protocol: str
    region: str
    admin: Credentials
    key_id: str
    producer: Credentials | None = None
    consumer: Credentials | None = None
    can_create_keys: bool = True
    emulator: Emulator | None = None
    ca: str | None = None  # a PEM CA file to trust over https (the emulator's)
    _clients: dict[tuple[str, str], KmsClient] = field(default_factory=dict)

    def client(self, flavour: str, creds: Credentials | None = None) -> KmsClient:
        """A (cached) client of ``flavour`` signing with ``creds`` (admin default)."""
        creds = creds or self.admin
        cache_key = (flavour, creds.access_key_id + "\0" + creds.access_key_secret)
        if cache_key not in self._clients:
            self._clients[cache_key] = make_client(
                flavour, self.endpoint, creds, self.region, self.protocol, self.ca
            )
        return self._clients[cache_key]

    def close(self) -> None:
        """Close every cached client."""
        for cached in self._clients.values():
            cached.close()

    def raw(self) -> RawHttp:
        """A raw HTTP connection to the endpoint."""
        return RawHttp(self.endpoint, tls=self.protocol == "https", ca=self.ca)
