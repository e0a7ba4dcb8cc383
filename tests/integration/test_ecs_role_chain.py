"""On ECS: the default chain finds the instance's RAM role, with no configuration.

The metadata service must be at its real address, 100.100.100.200:80, which a
shared machine cannot lend: the child runs in a network namespace of its own
(``unshare -n``, root only) with that address on its loopback, the emulator
serving both KMS and the metadata service there. Skips, saying why, elsewhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

_CHILD = textwrap.dedent(
    """
    import json, subprocess, sys, tempfile
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(
        ["ip", "addr", "add", "100.100.100.200/32", "dev", "lo"], check=True
    )
    from envelope_mq.kms_emulator import Emulator
    from envelope_mq.shared.config import Settings
    from envelope_mq.shared.kms import AliyunKms

    KEY = "5d6e7f80-9a0b-4c1d-8e2f-3a4b5c6d7e8f"
    seed = {
        "keys": [{"key_id": KEY, "aliases": ["alias/ecs"]}],
        "roles": [{"arn": "acs:ram::1234567890123456:role/emq-ecs",
                   "actions": ["GenerateDataKey", "Decrypt"], "keys": [KEY]}],
    }
    with Emulator(seed=seed, ecs_role="emq-ecs") as emu, \\
            tempfile.TemporaryDirectory() as home:
        # What a service on ECS has: an endpoint, a home without profiles.
        settings = Settings.from_env({"KMS_ENDPOINT": emu.endpoint, "HOME": home})
        with AliyunKms.from_settings(settings) as kms:
            made = kms.generate_data_key("alias/ecs", {"on": "ecs"})
            opened = kms.decrypt_data_key(made.wrapped, {"on": "ecs"})
            used = kms.credentials.current()
        print(json.dumps({
            "same_key": opened.plaintext == made.plaintext,
            "key_id": opened.key_id,
            "access_key_id": used.access_key_id,
            "token": bool(used.security_token),
            "answered": emu.request_count,
        }))
    """
)


def _namespace_unavailable() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    return None


def test_the_default_chain_signs_with_the_ecs_instance_role() -> None:
    reason = _namespace_unavailable()
    if reason is not None:
        pytest.skip(reason)
    env = {"PATH": "/usr/sbin:/usr/bin:/bin"}  # no ALIBABA_CLOUD_* at all
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["same_key"] is True
    assert answer["key_id"] == "5d6e7f80-9a0b-4c1d-8e2f-3a4b5c6d7e8f"
    assert answer["access_key_id"].startswith("STS.")
    assert answer["token"] is True
    assert answer["answered"] == {"GenerateDataKey": 1, "Decrypt": 1}
