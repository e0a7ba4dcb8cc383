"""A KMS 3.0 instance's dedicated gateway through ``alibabacloud-kms20160120``.

The dedicated gateway (``<instance-id>.cryptoservice.kms.aliyuncs.com``) serves
the data plane only, over HTTPS with a certificate of the instance's own CA,
and authenticates with RAM credentials through the current SDK generation.
SDK exceptions never leave this module: :func:`_translate` is the one place
that maps them into :mod:`envelope_mq.shared.errors`, with the same rules as
:mod:`.aliyun` (:mod:`.failures`, :mod:`.retry`).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials_api import ICredentialsProvider
from alibabacloud_kms20160120 import models as kms_models
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from darabonba.exceptions import ResponseException, UnretryableException
from darabonba.runtime import RuntimeOptions
from envelope_mq.shared import thirdparty_logs
from envelope_mq.shared.config import DEFAULT_REGION_ID, Settings
from envelope_mq.shared.errors import (
    ConfigError,
    KmsCallerError,
    KmsError,
    KmsRequestError,
    KmsUnavailableError,
)
from envelope_mq.shared.kms.answers import (
    bad_response,
    data_key,
    data_key_text,
    text_field,
)
from envelope_mq.shared.kms.credentials import AccessKey, Credentials
from envelope_mq.shared.kms.datakey import DataKey, UnwrappedKey, canonical_context
from envelope_mq.shared.kms.endpoint import parse_endpoint, reach, where
from envelope_mq.shared.kms.failures import (
    HINTS,
    HTTP_ERROR,
    is_transient,
    network_code,
)
from envelope_mq.shared.kms.faults import caller_fault
from envelope_mq.shared.kms.retry import RetryPolicy
from Tea.exceptions import TeaException

__all__ = ["DedicatedKms"]

logger = logging.getLogger(__name__)
# darabonba (and Tea) attach a stderr handler of their own when imported, and
# log each request line, with every parameter, under DEBUG=sdk: their handler
# is taken away and their records dropped (thirdparty_logs).
thirdparty_logs.route_third_party_loggers()


class DedicatedKms:
    """GenerateDataKey and Decrypt on a KMS 3.0 instance's dedicated gateway.

    ``endpoint`` is the gateway, ``https://<instance-id>.cryptoservice.kms.
    aliyuncs.com`` (``host[:port]`` means HTTPS too: this gateway speaks
    nothing else); ``ca_file`` the instance's CA certificate (PEM), trusted
    beside the system's; verification is never off. ``https_proxy`` (or the
    environment's ``HTTPS_PROXY``) is an HTTP CONNECT proxy to reach it through:
    the certificate is still checked against the gateway's own name. Transient
    failures are retried as :class:`.aliyun.AliyunKms` does (full jitter,
    idempotent calls only).
    """

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        *,
        ca_file: str | None = None,
        https_proxy: str | None = None,
        region_id: str = DEFAULT_REGION_ID,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        scheme, host = parse_endpoint(endpoint, "KMS_INSTANCE_ENDPOINT")
        if scheme != "https":
            raise ConfigError(
                "a dedicated KMS gateway speaks HTTPS only: KMS_INSTANCE_ENDPOINT "
                "must be https://<instance-id>.cryptoservice.kms.aliyuncs.com"
            )
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("KMS timeouts must be positive")
        if ca_file is not None:
            _check_ca_file(ca_file)
        thirdparty_logs.guard_sdk_loggers()
        self.credentials = credentials
        self._where = where(scheme, host)
        self._host, self._ca_file, self._proxy = host, ca_file, https_proxy
        self._timeout = connect_timeout
        self._retry = RetryPolicy(max_attempts, backoff, max_backoff, sleep)
        self._provider = _Provider(credentials)
        self._runtime = RuntimeOptions(
            autoretry=False,  # retries are ours, and only on transient errors
            connect_timeout=int(connect_timeout * 1000),
            read_timeout=int(read_timeout * 1000),
        )
        self._client = Client(
            Config(
                credential=CredentialClient(provider=self._provider),
                endpoint=host,
                protocol="https",
                region_id=region_id,
                ca=ca_file,
                # None: the SDK takes HTTPS_PROXY from the environment itself.
                https_proxy=https_proxy,
            )
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> DedicatedKms:
        """The gateway of ``settings.kms_instance_endpoint`` and its CA."""
        if not settings.kms_instance_endpoint:
            raise ConfigError("KMS_INSTANCE_ENDPOINT names no dedicated gateway")
        return cls(
            settings.kms_instance_endpoint,
            Credentials.from_settings(settings),
            ca_file=settings.kms_ca_file,
            region_id=settings.region_id,
            **options,
        )

    def __repr__(self) -> str:
        return f"DedicatedKms({self._where})"

    def close(self) -> None:
        """Nothing to release: the SDK pools connections process-wide."""

    def probe(self) -> None:
        """Check that the gateway can be reached (see :func:`.endpoint.reach`).

        Through a proxy there is nothing to check here: the proxy reaches it.

        Raises:
            KmsUnavailableError: it cannot; the message names it.
        """
        if self._proxy is None:
            reach(
                "https",
                self._host,
                ca_file=self._ca_file,
                also_system_cas=True,  # as the SDK does
                timeout=self._timeout,
            )

    def __enter__(self) -> DedicatedKms:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """GenerateDataKey with KeySpec AES_256, bound to ``context``."""
        request = kms_models.GenerateDataKeyRequest(
            key_id=key_id,
            key_spec="AES_256",
            encryption_context=_context(context),
        )
        body = self._send(
            "GenerateDataKey",
            lambda: self._client.generate_data_key_with_options(request, self._runtime),
        )
        return DataKey(
            plaintext=data_key(body, "GenerateDataKey"),
            wrapped=text_field(body, "CiphertextBlob", "GenerateDataKey"),
            key_id=text_field(body, "KeyId", "GenerateDataKey"),
        )

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Decrypt a CiphertextBlob from GenerateDataKey under the same context."""
        request = kms_models.DecryptRequest(
            ciphertext_blob=wrapped, encryption_context=_context(context)
        )
        body = self._send(
            "Decrypt", lambda: self._client.decrypt_with_options(request, self._runtime)
        )
        return UnwrappedKey(
            data_key(body, "Decrypt"), text_field(body, "KeyId", "Decrypt")
        )

    def wrap_data_key(
        self, key_id: str, plaintext: bytes, context: Mapping[str, str]
    ) -> tuple[str, str]:
        """Encrypt a data key under ``key_id``: (KeyId, CiphertextBlob).

        As :meth:`.aliyun.AliyunKms.wrap_data_key`: the key's base64 text is
        wrapped, so Decrypt gives back what GenerateDataKey's Plaintext was.
        """
        request = kms_models.EncryptRequest(
            key_id=key_id,
            plaintext=data_key_text(plaintext),
            encryption_context=_context(context),
        )
        body = self._send(
            "Encrypt", lambda: self._client.encrypt_with_options(request, self._runtime)
        )
        return (
            text_field(body, "KeyId", "Encrypt"),
            text_field(body, "CiphertextBlob", "Encrypt"),
        )

    def describe_key_id(self, key: str) -> str:
        """The KeyId of ``key``: DescribeKey, which dedicated gateways refuse.

        A real instance gateway serves the data plane only and answers
        ``Rejected.UnsupportedOperation``; the shared gateway answers it.

        Raises:
            KmsRequestError: refused (on a dedicated gateway, always).
            KmsUnavailableError: KMS could not answer.
        """
        request = kms_models.DescribeKeyRequest(key_id=key)
        body = self._send(
            "DescribeKey",
            lambda: self._client.describe_key_with_options(request, self._runtime),
        )
        metadata = body.get("KeyMetadata")
        if not isinstance(metadata, Mapping):
            raise bad_response("DescribeKey")
        return text_field(metadata, "KeyId", "DescribeKey")

    def _send(self, action: str, call: Callable[[], Any]) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:
            # Credentials first, outside the SDK: it would wrap our errors in
            # its own. The request is then signed with this very snapshot.
            self._provider.hold(self.credentials.current())
            failure: KmsError | None = None
            try:
                with _translate(action, self._where):
                    response = call()
            except KmsError as exc:
                failure = exc
            finally:
                self._provider.hold(None)
            if failure is not None:
                # Raised again out of the handler, so that the SDK's exception
                # (it quotes the request URL: every parameter) is not its context.
                failure.__context__ = None
                raise failure
            body = getattr(response, "body", None)
            answer = body.to_map() if body is not None else None
            if not isinstance(answer, dict):
                raise bad_response(action)
            return answer

        return self._retry.run(action, attempt, idempotent=True)


class _Provider(ICredentialsProvider):  # type: ignore[misc]
    """Our Credentials as the SDK's provider.

    :meth:`DedicatedKms._send` fetches the credential before each request and
    holds it here for the calling thread, so the SDK signs with that snapshot.
    """

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._held = threading.local()

    def hold(self, key: AccessKey | None) -> None:
        self._held.key = key

    def get_credentials(self) -> Any:
        key = getattr(self._held, "key", None) or self._credentials.current()
        return _Current(key.access_key_id, key.access_key_secret, key.security_token)

    async def get_credentials_async(self) -> Any:
        return self.get_credentials()

    def get_provider_name(self) -> str:
        return "envelope-mq"


class _Current:
    """One credential snapshot in the shape the SDK reads."""

    def __init__(self, key_id: str, secret: str, token: str | None) -> None:
        self._key_id, self._secret, self._token = key_id, secret, token

    def __repr__(self) -> str:
        return "_Current(...)"

    def get_access_key_id(self) -> str:
        return self._key_id

    def get_access_key_secret(self) -> str:
        return self._secret

    def get_security_token(self) -> str | None:
        return self._token

    def get_provider_name(self) -> str:
        return "envelope-mq"


def _context(context: Mapping[str, str]) -> dict[str, str] | None:
    # The SDK serialises the dict itself; canonical_context checks it is
    # well formed (the same rules as the wire format) before anything is sent.
    if not context:
        return None
    canonical_context(context)
    return dict(context)


@contextmanager
def _translate(action: str, where: str) -> Iterator[None]:
    """Map the SDK's exceptions of one call into shared.errors.

    Texts are rebuilt from the code, status and request id only: the SDK's
    own quote the request URL, with every parameter.
    """
    try:
        yield
    except ResponseException as exc:
        code = str(getattr(exc, "code", "") or "SDK.UnknownServerError")
        status = getattr(exc, "status_code", None) or getattr(exc, "statusCode", None)
        data = getattr(exc, "data", None)
        request_id = str(data.get("RequestId") or "") if isinstance(data, dict) else ""
        message = str(data.get("Message") or "") if isinstance(data, dict) else ""
        head = message.split(":", 1)[0].strip()[:200]
        text = f"KMS {action} failed: {code} (HTTP {status})" + (
            f": {head}" if head else ""
        )
        transient = is_transient(status, code)
        likely = None if transient else caller_fault(code)
        if likely is not None:
            raise KmsCallerError(
                f"{text} (likely cause: {likely})",
                code=code,
                request_id=request_id,
                http_status=status,
                cause=likely,
            ) from None
        kind = KmsUnavailableError if transient else KmsRequestError
        raise kind(text, code=code, request_id=request_id, http_status=status) from None
    except (UnretryableException, TeaException, OSError) as exc:
        code = network_code(_inner_text(exc))
        hint = HINTS.get(code, "")
        raise KmsUnavailableError(
            f"KMS {action} failed at {where}: {code}{hint}", code=code
        ) from None


def _inner_text(exc: BaseException) -> str:
    inner = getattr(exc, "inner_exception", None) or getattr(exc, "message", None)
    return f"{type(exc).__name__} {inner or exc}" if inner or str(exc) else HTTP_ERROR


def _check_ca_file(path: str) -> None:
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = (exc.strerror if isinstance(exc, OSError) else None) or "not PEM"
        raise ConfigError(
            f"KMS CA file {path!r} cannot be used ({reason}): it must be a "
            "readable PEM file of CA certificates"
        ) from None
