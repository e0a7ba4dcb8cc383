"""PageNumber/PageSize paging shared by the List* operations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from envelope_mq.kms_emulator.params import parse_int

__all__ = ["page"]

T = TypeVar("T")


def page(
    params: Mapping[str, str], items: Sequence[T]
) -> tuple[list[T], dict[str, Any]]:
    """One page of ``items`` and the PageNumber/PageSize/TotalCount fields (ints)."""
    number = parse_int(params, "PageNumber", 1, 1, 10**9)
    size = parse_int(params, "PageSize", 10, 1, 100)
    start = (number - 1) * size
    fields = {"PageNumber": number, "PageSize": size, "TotalCount": len(items)}
    return list(items[start : start + size]), fields
