"""The in-memory shape of keys and key versions."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ASYMMETRIC_SPECS",
    "KEY_STATES",
    "SYMMETRIC_SPECS",
    "Key",
    "KeyVersion",
]

# KeySpec -> material length in bytes; the only specs the emulator can serve.
SYMMETRIC_SPECS: dict[str, int] = {"Aliyun_AES_256": 32, "Aliyun_AES_128": 16}
# Documented specs the real service has and the emulator answers as unsupported.
ASYMMETRIC_SPECS = frozenset(
    {
        "Aliyun_AES_192",
        "Aliyun_SM4",
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "EC_P256",
        "EC_P256K",
        "EC_SM2",
    }
)
KEY_STATES = ("Enabled", "Disabled", "PendingDeletion", "PendingImport")


@dataclass(eq=False)
class KeyVersion:
    """One version of a key's material, with its cipher object ready for use."""

    version_id: str
    key_id: str
    created: int
    material: bytes = field(repr=False)
    aead: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.aead = AESGCM(self.material)


@dataclass(eq=False)
class Key:
    """A customer master key; ``versions`` are oldest first, the last is primary."""

    key_id: str
    created: int
    key_spec: str = "Aliyun_AES_256"
    description: str = ""
    state: str = "Enabled"
    origin: str = "Aliyun_KMS"
    protection_level: str = "SOFTWARE"
    key_usage: str = "ENCRYPT/DECRYPT"
    delete_date: int | None = None
    rotation_interval: int | None = None  # seconds; None = automatic rotation off
    versions: list[KeyVersion] = field(default_factory=list)

    @property
    def primary(self) -> KeyVersion | None:
        """The version Encrypt and GenerateDataKey use (None before import)."""
        return self.versions[-1] if self.versions else None

    @property
    def last_rotation(self) -> int:
        """Creation time of the newest version (the key's own for a new key)."""
        return self.versions[-1].created if self.versions else self.created

    @property
    def next_rotation(self) -> int | None:
        """When automatic rotation is due, or None when it is off."""
        if self.rotation_interval is None:
            return None
        return self.last_rotation + self.rotation_interval
