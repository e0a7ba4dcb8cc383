"""One API call in flight: its parameters, its caller, and the checks every
operation applies in the same order (resolve the key, authorize, key state)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.keyring import Keyring
from envelope_mq.kms_emulator.model import Key
from envelope_mq.kms_emulator.params import parse_bool, required
from envelope_mq.kms_emulator.policy import Principal, deny
from envelope_mq.kms_emulator.states import check_state

__all__ = ["Call"]


@dataclass(frozen=True)
class Call:
    """The action, its decoded parameters, the principal (None: auth off), the keys."""

    action: str
    params: Mapping[str, str]
    principal: Principal | None
    ring: Keyring

    def key(self, param: str = "KeyId", *, gate: str | None = None) -> Key:
        """Resolve ``param``, authorize the caller on it and apply the state table.

        ``gate`` names the row of the state table when it is not the action's own.
        """
        key = self.ring.find(required(self.params, param))
        self.authorize(key)
        check_state(gate or self.action, key.state)
        return key

    def authorize(self, key: Key) -> None:
        """403 unless the principal may use ``key``."""
        if self.principal is not None and not self.principal.may_use(
            self.ring.names(key)
        ):
            raise deny(self.principal, self.action, self.ring.arn(key.key_id))

    def dry_run(self) -> None:
        """DryRun=true: everything checked, nothing done; KMS answers with an error."""
        if parse_bool(self.params, "DryRun", False):
            raise ApiError(
                400,
                "DryRunOperationError",
                "The request would have succeeded, but DryRun was set.",
            )
