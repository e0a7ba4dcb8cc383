"""What the emulator answers: a status and a JSON body, in the API's shapes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONTENT_TYPE", "Reply", "encode_json", "error_reply"]

CONTENT_TYPE = "application/json;charset=utf-8"


@dataclass
class Reply:
    """An answer: status and JSON body, or ``abort`` to reset the connection."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    abort: bool = False


def error_reply(
    status: int, code: str, message: str, *, host_id: str, request_id: str = ""
) -> Reply:
    """An error in the API's JSON shape (the Go SDK also reads HostId, Recommend)."""
    return Reply(
        status,
        {
            "RequestId": request_id or str(uuid.uuid4()),
            "HostId": host_id,
            "Code": code,
            "Message": message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}",
        },
    )


def encode_json(body: Mapping[str, Any]) -> bytes:
    """The compact UTF-8 JSON of a reply body."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
