"""Parsing of API parameters as the wire carries them (every value is a string)."""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from envelope_mq.kms_emulator.errors import invalid_parameter, missing_parameter

__all__ = [
    "format_date",
    "optional",
    "parse_bool",
    "parse_date",
    "parse_int",
    "parse_interval",
    "parse_json",
    "required",
    "utf8",
]

_INT = re.compile(r"-?[0-9]{1,12}")
_INTERVAL = re.compile(r"([0-9]{1,12})([dhms]?)")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}
_DATE = "%Y-%m-%dT%H:%M:%SZ"


def required(params: Mapping[str, str], name: str) -> str:
    """The value of ``name``; absent or empty is MissingParameter."""
    value = params.get(name)
    if not value:
        raise missing_parameter(name)
    return value


def utf8(value: str, name: str) -> bytes:
    """The UTF-8 bytes of ``value``; lone surrogates are InvalidParameter."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid_parameter(name, "Expected UTF-8 text.") from exc


def optional(params: Mapping[str, str], name: str) -> str | None:
    """The value of ``name``, or None when absent or empty."""
    return params.get(name) or None


def parse_bool(params: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean, case-insensitive: the Python SDKs send True/False, the CLI true."""
    value = optional(params, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise invalid_parameter(name, "Expected true or false.")


def parse_int(
    params: Mapping[str, str], name: str, default: int, low: int, high: int
) -> int:
    """A decimal integer within [low, high]."""
    value = optional(params, name)
    if value is None:
        return default
    if not _INT.fullmatch(value):
        raise invalid_parameter(name, "Expected an integer.")
    number = int(value)
    if not low <= number <= high:
        raise invalid_parameter(name, f"Expected a value from {low} to {high}.")
    return number


def parse_interval(value: str, name: str, low_days: int, high_days: int) -> int:
    """A RotationInterval like ``7d``, ``168h`` or ``604800s``, in seconds."""
    match = _INTERVAL.fullmatch(value.strip())
    if match is None:
        raise invalid_parameter(name, "Expected <integer>[d|h|m|s].")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if not low_days * 86400 <= seconds <= high_days * 86400:
        raise invalid_parameter(
            name, f"Expected a value from {low_days} to {high_days} days."
        )
    return seconds


def parse_json(value: str, name: str) -> Any:
    """A JSON document, or InvalidParameter (also for absurd nesting)."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise invalid_parameter(name, "Expected JSON.") from exc


def format_date(epoch: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, the form of every date the API returns."""
    return time.strftime(_DATE, time.gmtime(int(epoch)))


def parse_date(value: str) -> int:
    """Inverse of :func:`format_date`; ValueError if ``value`` is not of that form."""
    return calendar.timegm(time.strptime(value, _DATE))
