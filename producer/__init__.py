"""The producer: seal messages with envelope encryption and publish them, confirmed.

:class:`EncryptedPublisher` is the library; ``envelope-mq produce`` the command.
"""

from __future__ import annotations

from producer.publisher import EncryptedPublisher
from producer.transport import TransportOptions, TransportStats

__all__ = ["EncryptedPublisher", "TransportOptions", "TransportStats"]
