"""Alibaba Cloud KMS 2016-01-20 through aliyun-python-sdk-kms's ``AcsClient``.

SDK exceptions never leave this module: :func:`_translate` is the one place
that maps them (and socket errors) into :mod:`envelope_mq.shared.errors`.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.auth.credentials import AccessKeyCredential, StsTokenCredential
from aliyunsdkcore.auth.signers.access_key_signer import AccessKeySigner
from aliyunsdkcore.auth.signers.signer import Signer
from aliyunsdkcore.auth.signers.sts_token_signer import StsTokenSigner
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.http import protocol_type
from aliyunsdkcore.request import RpcRequest
from aliyunsdkkms.endpoint import endpoint_data
from aliyunsdkkms.request.v20160120.DecryptRequest import DecryptRequest
from aliyunsdkkms.request.v20160120.EncryptRequest import EncryptRequest
from aliyunsdkkms.request.v20160120.GenerateDataKeyRequest import (
    GenerateDataKeyRequest,
)
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
from envelope_mq.shared.kms.credentials import Credentials
from envelope_mq.shared.kms.datakey import (
    DataKey,
    UnwrappedKey,
    canonical_context,
)
from envelope_mq.shared.kms.endpoint import parse_endpoint, reach, where
from envelope_mq.shared.kms.failures import (
    HINTS,
    HTTP_ERROR,
    is_transient,
    network_code,
)
from envelope_mq.shared.kms.faults import caller_fault
from envelope_mq.shared.kms.retry import RetryPolicy

__all__ = ["AliyunKms"]

logger = logging.getLogger(__name__)
# The SDKs imported above attach stream handlers of their own: route them. The
# SDK logs every response body at DEBUG (GenerateDataKey's and Decrypt's carry
# the plaintext data key), every request parameter (Encrypt's Plaintext) at
# DEBUG, and server messages that may quote them at ERROR; _translate says what
# failed without them, so no record of its loggers is kept (thirdparty_logs).
thirdparty_logs.route_third_party_loggers()

_API_VERSION = "2016-01-20"


class AliyunKms:
    """Alibaba Cloud KMS 2016-01-20 through the official ``AcsClient``.

    The SDK does no retries for KMS (kms-api.md §4), so this client retries
    transient failures itself: at most ``max_attempts`` tries, sleeping a random
    time in ``[0, min(max_backoff, backoff * 2**n)]`` between them ("full
    jitter", so that many clients do not retry in step).

    ``endpoint`` overrides the regional endpoint: ``https://host[:port]`` and
    ``http://host:port`` are taken as written; a bare ``host[:port]`` means TLS,
    except on a loopback address (the local emulator), where it means plain HTTP;
    a malformed one is a ConfigError naming ``endpoint_name``, the setting (or
    flag) it came from.
    ``ca_bundle`` names a PEM file of CAs to trust instead of the system's (a
    KMS 3.0 dedicated gateway presents a certificate of the instance's own CA);
    certificate verification is never turned off.

    Credentials: an AccessKey pair, or ``credentials`` (a refreshable source,
    see :mod:`envelope_mq.shared.kms.credentials`) asked again for every
    request, so that STS tokens renewed by the library are used at once.
    """

    def __init__(
        self,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        region_id: str = DEFAULT_REGION_ID,
        *,
        credentials: Credentials | None = None,
        endpoint: str | None = None,
        endpoint_name: str = "KMS_ENDPOINT",
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        ca_bundle: str | None = None,
    ) -> None:
        if credentials is None:
            if not access_key_id or not access_key_secret:
                raise ConfigError(
                    "KMS needs ALIBABA_CLOUD_ACCESS_KEY_ID and "
                    "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
                )
            credentials = Credentials.static(access_key_id, access_key_secret)
        elif access_key_id or access_key_secret:
            raise ConfigError("give KMS an AccessKey pair or credentials, not both")
        self.credentials = credentials
        if max_attempts < 1 or connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("KMS timeouts must be positive and max_attempts >= 1")
        self._endpoint = parse_endpoint(endpoint, endpoint_name) if endpoint else None
        self._where = where(*(self._endpoint or _regional(region_id)))
        self._region_id = region_id
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._retry = RetryPolicy(max_attempts, backoff, max_backoff, sleep)
        thirdparty_logs.guard_sdk_loggers()
        self._ca_bundle = ca_bundle
        if ca_bundle is not None:
            _check_ca_bundle(ca_bundle)
        # auto_retry=False: retries are ours, and only on transient errors.
        # verify=True (not None): with None the SDK would take the CA bundle
        # from the environment at every request, behind the caller's back.
        self._client = _Client(
            _CurrentCredentialSigner(credentials),
            region_id,
            auto_retry=False,
            pool_size=32,
            verify=ca_bundle or True,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> AliyunKms:
        """A client for the region, endpoint and credentials in ``settings``.

        An AccessKey in ``settings`` (with its security token, if any) is
        used as it is; without one, the alibabacloud-credentials chain.
        """
        return cls(
            region_id=settings.region_id,
            credentials=Credentials.from_settings(settings),
            endpoint=settings.kms_endpoint,
            ca_bundle=settings.kms_ca_file,
            **options,
        )

    def __repr__(self) -> str:
        where = "://".join(self._endpoint) if self._endpoint else self._region_id
        return f"AliyunKms({where})"

    def close(self) -> None:
        """Close the SDK's pooled HTTP connections (idempotent).

        The SDK only closes them when the client is garbage-collected, which
        leaves sockets open for an unpredictable time.
        """
        session = getattr(self._client, "session", None)
        if session is not None:
            session.close()

    def probe(self) -> None:
        """Check that the endpoint can be reached (see :func:`.endpoint.reach`).

        Raises:
            KmsUnavailableError: it cannot; the message names it.
        """
        scheme, host = self._endpoint or _regional(self._region_id)
        ca = self._ca_bundle
        reach(scheme, host, ca_file=ca, timeout=self._connect_timeout)

    def __enter__(self) -> AliyunKms:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """GenerateDataKey with KeySpec AES_256, bound to ``context``."""

        def build() -> RpcRequest:
            request = GenerateDataKeyRequest()
            request.set_KeyId(key_id)
            request.set_KeySpec("AES_256")
            if context:
                request.set_EncryptionContext(canonical_context(context))
            return request

        body = self._send("GenerateDataKey", build, idempotent=True)
        wrapped = text_field(body, "CiphertextBlob", "GenerateDataKey")
        master_key_id = text_field(body, "KeyId", "GenerateDataKey")
        plaintext = data_key(body, "GenerateDataKey")
        return DataKey(plaintext=plaintext, wrapped=wrapped, key_id=master_key_id)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Decrypt a CiphertextBlob from GenerateDataKey under the same context.

        The result names the master key KMS says it used (Decrypt's KeyId):
        the blob chooses the key, not the caller, so that is the sender's
        verified identity.
        """

        def build() -> RpcRequest:
            request = DecryptRequest()
            request.set_CiphertextBlob(wrapped)
            if context:
                request.set_EncryptionContext(canonical_context(context))
            return request

        body = self._send("Decrypt", build, idempotent=True)
        key_id = text_field(body, "KeyId", "Decrypt")
        return UnwrappedKey(data_key(body, "Decrypt"), key_id)

    def wrap_data_key(
        self, key_id: str, plaintext: bytes, context: Mapping[str, str]
    ) -> tuple[str, str]:
        """Encrypt a data key under ``key_id``: (KeyId, CiphertextBlob).

        One more wrapped copy of a key from GenerateDataKey (another region's
        master key). KMS wraps the key's base64 text, as GenerateDataKey does,
        so Decrypt of either blob gives back the same Plaintext.
        """
        text = data_key_text(plaintext)

        def build() -> RpcRequest:
            request = EncryptRequest()
            request.set_KeyId(key_id)
            request.set_Plaintext(text)
            if context:
                request.set_EncryptionContext(canonical_context(context))
            return request

        # A repeated Encrypt only makes another blob of the same key: harmless.
        body = self._send("Encrypt", build, idempotent=True)
        return (
            text_field(body, "KeyId", "Encrypt"),
            text_field(body, "CiphertextBlob", "Encrypt"),
        )

    def describe_key_id(self, key: str) -> str:
        """The KeyId of ``key`` (a key id, ``alias/NAME`` or an ARN): DescribeKey.

        Raises:
            KmsRequestError: no such key or alias, or no permission to describe it.
            KmsUnavailableError: KMS could not answer.
        """
        body = self.call("DescribeKey", {"KeyId": key}, idempotent=True)
        metadata = body.get("KeyMetadata")
        if not isinstance(metadata, Mapping):
            raise bad_response("DescribeKey")
        return text_field(metadata, "KeyId", "DescribeKey")

    def call(
        self,
        action: str,
        params: Mapping[str, object] | None = None,
        *,
        idempotent: bool = False,
    ) -> dict[str, Any]:
        """Call any KMS action and return its JSON body.

        Dicts and lists become compact JSON, booleans ``true``/``false``. Unless
        ``idempotent``, a failure is retried only when KMS surely did not act on
        the request (no connection, Throttling): a timed-out CreateKey might
        have created a key.
        """
        query = {name: _param_text(value) for name, value in (params or {}).items()}

        def build() -> RpcRequest:
            request = RpcRequest("Kms", _API_VERSION, action, "kms")
            request.set_method("POST")
            request.set_protocol_type("https")
            request.endpoint_map = endpoint_data.getEndpointMap()
            request.endpoint_regional = endpoint_data.getEndpointRegional()
            for name, text in query.items():
                request.add_query_param(name, text)
            return request

        return self._send(action, build, idempotent=idempotent)

    def _send(
        self, action: str, build: Callable[[], RpcRequest], *, idempotent: bool
    ) -> dict[str, Any]:
        def attempt() -> bytes:
            request = build()  # a fresh request each time: new nonce, new signature
            request.set_connect_timeout(self._connect_timeout)
            request.set_read_timeout(self._read_timeout)
            if self._endpoint:
                scheme, host = self._endpoint
                # The SDK turns TLS on with `protocol is PT.HTTPS`, an identity
                # test that an equal string of our own fails: pass its constant,
                # and the scheme in the host too, which its URL builder honours.
                request.set_protocol_type(_PROTOCOLS[scheme])
                request.set_endpoint(f"{scheme}://{host}")
            failure: KmsError | None = None
            try:
                with _translate(action, self._where):
                    raw: bytes = self._client.do_action_with_exception(request)
            except KmsError as exc:
                failure = exc
            if failure is None:
                return raw
            # Raised again out of the handler, so that the SDK's exception
            # (it quotes the request URL: every parameter) is not its context.
            failure.__context__ = None
            raise failure

        return _json_body(
            self._retry.run(action, attempt, idempotent=idempotent), action
        )


class _CurrentCredentialSigner(Signer):  # type: ignore[misc]
    """Signs each request with the credential current at that moment.

    The SDK's own signers hold one credential for the client's lifetime; this
    one asks :class:`Credentials` every time (the library refreshes temporary
    credentials before they expire) and signs with one consistent snapshot.
    """

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def sign(self, region_id: str, request: Any) -> Any:
        key = self._credentials.current()
        if key.security_token:
            signer: Signer = StsTokenSigner(
                StsTokenCredential(
                    key.access_key_id, key.access_key_secret, key.security_token
                )
            )
        else:
            signer = AccessKeySigner(
                AccessKeyCredential(key.access_key_id, key.access_key_secret)
            )
        return signer.sign(region_id, request)


class _Client(AcsClient):  # type: ignore[misc]
    """AcsClient with our signer (its constructor only takes fixed credentials).

    The placeholder pair only satisfies that constructor, and keeps it from
    looking for ALIYUN_ACCESS_KEY_ID in the environment behind our back.
    """

    def __init__(self, signer: Signer, region_id: str, **options: Any) -> None:
        super().__init__("unused", "unused", region_id, **options)
        self._signer = signer


@contextmanager
def _translate(action: str, where: str = "") -> Iterator[None]:
    """Map SDK and socket exceptions of one KMS call into shared.errors.

    ``where`` (scheme://host:port) is named when KMS could not be reached.
    """
    try:
        yield
    except ServerException as exc:
        code = exc.get_error_code() or "SDK.UnknownServerError"
        status = exc.get_http_status()
        head = str(exc.get_error_msg() or "")
        if "string to sign" in head.lower():
            # SignatureDoesNotMatch echoes the server's string-to-sign (every
            # request parameter) after its ':'; keep only the sentence before.
            head = head.split(":", 1)[0]
        head = head.strip()[:200]
        text = f"KMS {action} failed: {code} (HTTP {status})" + (
            f": {head}" if head else ""
        )
        transient = is_transient(status, code)
        request_id = exc.get_request_id() or ""
        # Chained as a copy with only the text we kept: a printed traceback
        # shows the cause, and the original quotes every request parameter.
        cause = ServerException(code, head, http_status=status, request_id=request_id)
        likely = None if transient else caller_fault(code)
        if likely is not None:
            raise KmsCallerError(
                f"{text} (likely cause: {likely})",
                code=code,
                request_id=request_id,
                http_status=status,
                cause=likely,
            ) from cause
        kind = KmsUnavailableError if transient else KmsRequestError
        raise kind(
            text, code=code, request_id=request_id, http_status=status
        ) from cause
    except ClientException as exc:
        sdk_code = exc.get_error_code() or "SDK.ClientError"
        network = sdk_code == HTTP_ERROR
        # The SDK flattens the requests exception into text (the URL with every
        # parameter), so only a code read from its wording is kept.
        code = network_code(str(exc.get_error_msg())) if network else sdk_code
        kind = KmsUnavailableError if network else KmsRequestError
        # Chained as a copy without that text, for the same reason as above.
        cause = ClientException(sdk_code, code)
        hint = HINTS.get(code, "")
        at = f" at {where}" if network and where else ""
        raise kind(f"KMS {action} failed{at}: {code}{hint}", code=code) from cause
    except OSError as exc:
        at = f" at {where}" if where else ""
        raise KmsUnavailableError(
            f"KMS {action} failed{at}: {HTTP_ERROR}", code=HTTP_ERROR
        ) from exc


def _check_ca_bundle(path: str) -> None:
    """A CA bundle that cannot be used is a configuration error now, not later."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = (exc.strerror if isinstance(exc, OSError) else None) or "not PEM"
        raise ConfigError(
            f"KMS CA file {path!r} cannot be used ({reason}): it must be a "
            "readable PEM file of CA certificates"
        ) from None


def _regional(region_id: str) -> tuple[str, str]:
    # Where the SDK's endpoint table sends KMS calls without an override.
    return "https", f"kms.{region_id}.aliyuncs.com"


_PROTOCOLS = {"http": protocol_type.HTTP, "https": protocol_type.HTTPS}


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _json_body(raw: bytes, action: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise bad_response(action) from exc
    if not isinstance(body, dict):
        raise bad_response(action)
    return body
