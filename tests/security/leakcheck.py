"""pytest plugin: fail any test during which a secret reached a log record.

Enable it with ``-p leakcheck`` (this directory on ``PYTHONPATH``); the security
suite runs the integration suite that way in a subprocess
(tests/security/test_no_secret_leaks.py).

While it is on, every logger logs at DEBUG into a recording handler, and the
places where secrets come into being are watched, so the plugin knows them
without any help from the tests:

- data keys: every ``DataKey`` made and every key given to ``Aes256Gcm``;
- plaintext payloads: every plaintext sealed or opened by ``Aes256Gcm``;
- AccessKey secrets: every ``Settings``, emulator ``Principal`` and test
  ``Credentials`` made.

After each test, the text of each record it produced (the formatted message,
its arguments' reprs, and the formatted exception with its chained causes) is
searched for each secret in every form it could take in text: raw UTF-8, the
escaped ``bytes`` repr, hex and base64 (standard, URL-safe, and percent-encoded
as in a query string). A hit turns the
test's teardown into a failure that names the kind of secret and the logger,
never the secret itself. Payloads shorter than 16 bytes are not searched: they
would match ordinary words.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

MIN_PAYLOAD = 16
_WINDOW = 16  # every searched form is at least this long

_SECRETS_KEY = pytest.StashKey["SecretRegistry"]()
_HANDLER_KEY = pytest.StashKey["RecordingHandler"]()
_SCANNED_KEY = pytest.StashKey[list[int]]()  # one counter: records scanned


@dataclass(frozen=True)
class Leak:
    """A secret of ``kind`` found in a record of ``logger``."""

    kind: str
    form: str
    logger: str
    level: str


def forms_of(value: bytes | str) -> set[str]:
    """Every text form of ``value`` worth searching for."""
    raw = value.encode() if isinstance(value, str) else value
    text = base64.b64encode(raw).decode().rstrip("=")
    found = {
        raw.hex(),
        text,
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        # In a query string (the KMS RPC API's parameters: Encrypt's Plaintext
        # is a data key), '+' and '/' are written %2B and %2F.
        quote(text, safe=""),
        repr(raw)[2:-1],
    }
    with contextlib.suppress(UnicodeDecodeError):
        found.add(raw.decode())
    return {f for f in found if len(f) >= _WINDOW}


class SecretRegistry:
    """Secrets seen so far, by the form they would take in text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: dict[str, str] = {}  # form -> kind
        self._per_test: dict[str, str] = {}
        self._prefixes: dict[str, list[str]] | None = None
        self.seen: dict[str, set[int]] = {}  # kind -> hashes of distinct values

    def add(self, kind: str, value: bytes | str, *, lasting: bool = False) -> None:
        """Remember ``value``; ``lasting`` secrets outlive the current test."""
        if kind == "payload" and len(value) < MIN_PAYLOAD:
            return
        with self._lock:
            self.seen.setdefault(kind, set()).add(hash(value))
            target = self._forms if lasting else self._per_test
            for form in forms_of(value):
                target[form] = kind
            self._prefixes = None

    def end_test(self) -> None:
        """Forget the per-test secrets (payloads and data keys)."""
        with self._lock:
            self._per_test.clear()
            self._prefixes = None

    def search(self, text: str) -> list[tuple[str, str]]:
        """(kind, form name) of every secret found in ``text``, once each."""
        with self._lock:
            if self._prefixes is None:
                prefixes: dict[str, list[str]] = {}
                for form in (*self._forms, *self._per_test):
                    prefixes.setdefault(form[:_WINDOW], []).append(form)
                self._prefixes = prefixes
            prefixes = self._prefixes
            kinds = {**self._forms, **self._per_test}
        hits: set[tuple[str, str]] = set()
        # One set lookup per position: fast enough for tens of thousands of
        # secrets, where one ``in`` per secret would not be.
        for start in range(len(text) - _WINDOW + 1):
            candidates = prefixes.get(text[start : start + _WINDOW])
            if candidates:
                for form in candidates:
                    if text.startswith(form, start):
                        hits.add((kinds[form], _form_name(form)))
        return sorted(hits)


def _form_name(form: str) -> str:
    if all(c in "0123456789abcdef" for c in form):
        return "hex"
    return f"text of {len(form)} characters"


class RecordingHandler(logging.Handler):
    """Keeps the full text of every record until the end of the test."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[tuple[str, str, str]] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.getMessage()]
        if record.args:
            parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(_exception_text(record.exc_info[1]))
        with self._records_lock:
            self.records.append((record.name, record.levelname, "\n".join(parts)))

    def take(self) -> list[tuple[str, str, str]]:
        """Every record since the last call."""
        with self._records_lock:
            taken, self.records = self.records, []
        return taken


def _exception_text(exc: BaseException) -> str:
    """The message and repr of ``exc`` and of every cause and context behind it."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{current!s} {current!r}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def scan(
    registry: SecretRegistry, records: Iterable[tuple[str, str, str]]
) -> list[Leak]:
    """Every secret of ``registry`` found in ``records``."""
    leaks = []
    for name, level, text in records:
        for kind, form in registry.search(text):
            leaks.append(Leak(kind, form, name, level))
    return leaks


# -- where secrets come into being ---------------------------------------------


def _after(cls: type, method: str, watch: Callable[..., None]) -> Callable[[], None]:
    """Call ``watch(self, result, *args)`` after ``cls.method``; returns an undo."""
    original = cls.__dict__[method]

    @functools.wraps(original)
    def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        watch(self, result, *args, **kwargs)
        return result

    setattr(cls, method, watched)
    return lambda: setattr(cls, method, original)


def _install_watches(registry: SecretRegistry) -> list[Callable[[], None]]:
    from envelope_mq.kms_emulator.policy import Principal
    from envelope_mq.shared.config import Settings
    from envelope_mq.shared.crypto import Aes256Gcm
    from envelope_mq.shared.kms.datakey import DataKey

    from envelope_mq.testing.kms import Credentials

    def key(_: object, __: object, key: bytes, *___: object, **____: object) -> None:
        registry.add("data key", key)

    def sealed(
        _: object, __: object, _n: bytes, plaintext: bytes, *___: object
    ) -> None:
        registry.add("payload", plaintext)

    def opened(_: object, plaintext: bytes, *__: object) -> None:
        registry.add("payload", plaintext)

    def data_key(self: DataKey, *_: object, **__: object) -> None:
        registry.add("data key", self.plaintext)

    def secret(self: Any, *_: object, **__: object) -> None:
        if self.access_key_secret:
            registry.add("access-key secret", self.access_key_secret, lasting=True)

    return [
        _after(Aes256Gcm, "__init__", key),
        _after(Aes256Gcm, "seal", sealed),
        _after(Aes256Gcm, "open", opened),
        _after(DataKey, "__init__", data_key),
        _after(Settings, "__init__", secret),
        _after(Principal, "__init__", secret),
        _after(Credentials, "__init__", secret),
    ]


# -- hooks -----------------------------------------------------------------------

_undo: list[Callable[[], None]] = []
_saved_level: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    registry = SecretRegistry()
    handler = RecordingHandler()
    config.stash[_SECRETS_KEY] = registry
    config.stash[_HANDLER_KEY] = handler
    config.stash[_SCANNED_KEY] = [0]
    root = logging.getLogger()
    _saved_level.append(root.level)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    _undo.extend(_install_watches(registry))


def pytest_unconfigure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.removeHandler(config.stash[_HANDLER_KEY])
    if _saved_level:
        root.setLevel(_saved_level.pop())
    while _undo:
        _undo.pop()()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    if call.when != "teardown":
        return
    registry = item.config.stash[_SECRETS_KEY]
    handler = item.config.stash[_HANDLER_KEY]
    records = handler.take()
    leaks = scan(registry, records)
    registry.end_test()
    item.config.stash[_SCANNED_KEY][0] += len(records)
    if leaks:
        report = outcome.get_result()
        report.outcome = "failed"
        lines = sorted(
            {f"{x.kind} ({x.form}) in {x.level} of {x.logger}" for x in leaks}
        )
        report.longrepr = "secret leaked into the logs:\n  " + "\n  ".join(lines)


def pytest_terminal_summary(
    terminalreporter: Any, exitstatus: int, config: pytest.Config
) -> None:
    scanned = config.stash.get(_SCANNED_KEY, [0])[0]
    registry = config.stash.get(_SECRETS_KEY, None)
    seen = registry.seen if registry is not None else {}
    kinds = ", ".join(f"{len(v)} {k}s" for k, v in sorted(seen.items()))
    terminalreporter.write_line(
        f"leakcheck: scanned {scanned} log records at DEBUG for {kinds or 'no secrets'}"
    )
