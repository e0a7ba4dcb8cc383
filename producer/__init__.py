"""The producer: seal messages with envelope encryption and publish them, confirmed.

:class:`EncryptedPublisher` is the library; ``envelope-mq produce`` the command.
"""

from __future__ import annotations

from envelope_mq.producer.publisher import EncryptedPublisher
from envelope_mq.producer.transport import TransportOptions, TransportStats

__all__ = ["EncryptedPublisher", "TransportOptions", "TransportStats"]
