"""The emulator's own error tree (it imports nothing of envelope-mq).

EmulatorError                the root
 ├── ApiError                an error answer of the KMS API (status, Code, Message)
 ├── SeedError               a malformed seed file (names the offending line)
 └── StorageError            the data directory cannot be used
      └── DataDirLockedError another process owns the data directory
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "DataDirLockedError",
    "EmulatorError",
    "SeedError",
    "StorageError",
    "invalid_parameter",
    "missing_parameter",
]


class EmulatorError(Exception):
    """Root of every error the emulator raises on purpose."""


class ApiError(EmulatorError):
    """An error answer of the KMS API: HTTP status, Code and Message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ApiError({self.status!r}, {self.code!r}, {self.message!r})"


class SeedError(EmulatorError):
    """A seed file that cannot be loaded; ``line`` is 1-based, or None if unknown."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"invalid seed {where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


class StorageError(EmulatorError):
    """The data directory or its database cannot be used."""


class DataDirLockedError(StorageError):
    """Another emulator process owns the data directory."""

    def __init__(self, directory: str) -> None:
        super().__init__(
            f"the data directory {directory} is in use by another kms-emulator "
            "process (only one process may own a data directory)"
        )
        self.directory = directory


def missing_parameter(name: str) -> ApiError:
    """400 MissingParameter for the API parameter ``name``."""
    return ApiError(
        400, "MissingParameter", f'The parameter "{name}" is needed but not provided.'
    )


def invalid_parameter(name: str, reason: str = "") -> ApiError:
    """400 InvalidParameter for ``name``; ``reason`` never holds secrets."""
    text = f'The specified parameter "{name}" is not valid.'
    return ApiError(400, "InvalidParameter", f"{text} {reason}".rstrip())
