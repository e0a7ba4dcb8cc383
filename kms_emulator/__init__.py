"""A local Alibaba Cloud KMS (2016-01-20) the official SDKs cannot tell apart.

``Emulator`` runs it (in a thread, or from ``envelope-mq kms-emulator``);
``KmsService`` is its domain and ``ApiError`` an error answer of the API.
"""

from __future__ import annotations

from envelope_mq.kms_emulator.emulator import AuthMode, Emulator
from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.faults import Faults, FaultSettings
from envelope_mq.kms_emulator.service import KmsService

__all__ = ["ApiError", "AuthMode", "Emulator", "FaultSettings", "Faults", "KmsService"]
