"""A KMS 3.0 instance's dedicated gateway: its host name and what it serves.

The dedicated gateway (``<instance-id>.cryptoservice.kms.aliyuncs.com``) serves
the data plane of the keys in its instance; key management, aliases and
ReEncrypt stay on the shared gateway and are refused here.
"""

from __future__ import annotations

import re

from envelope_mq.kms_emulator.errors import ApiError

__all__ = [
    "DATA_PLANE_ACTIONS",
    "DEFAULT_INSTANCE_QPS",
    "INSTANCE_ID",
    "instance_host",
    "unsupported_here",
]

INSTANCE_ID = re.compile(r"kst-[a-z0-9]{5,40}")
#: The smallest instance spec, and the shared gateway's account quota.
DEFAULT_INSTANCE_QPS = 1000.0
DATA_PLANE_ACTIONS = frozenset(
    {
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
    }
)


def instance_host(instance_id: str) -> str:
    """The dedicated gateway's host name for ``instance_id``."""
    return f"{instance_id}.cryptoservice.kms.aliyuncs.com"


def unsupported_here(action: str) -> ApiError:
    """The dedicated gateway's answer to an operation it does not serve."""
    return ApiError(
        400,
        "Rejected.UnsupportedOperation",
        f"The operation {action} is not supported by the dedicated gateway of a "
        "KMS instance; use the shared gateway (kms.<region>.aliyuncs.com).",
    )
