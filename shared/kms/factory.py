"""The KMS client the settings ask for: the shared gateway or an instance's own."""

from __future__ import annotations

from typing import Any

from envelope_mq.shared.config import Settings
from envelope_mq.shared.kms.aliyun import AliyunKms
from envelope_mq.shared.kms.dedicated import DedicatedKms

__all__ = ["KmsClient", "kms_from_settings"]

KmsClient = AliyunKms | DedicatedKms


def kms_from_settings(settings: Settings, **options: Any) -> KmsClient:
    """A dedicated gateway's client if KMS_INSTANCE_ENDPOINT is set, else AliyunKms.

    ``options`` (timeouts, retries) go to the client's constructor.
    """
    if settings.kms_instance_endpoint:
        return DedicatedKms.from_settings(settings, **options)
    return AliyunKms.from_settings(settings, **options)
