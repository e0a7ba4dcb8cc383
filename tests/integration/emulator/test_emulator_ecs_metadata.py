"""Emulator only: an ECS RAM role, read from the metadata service at its real
address, 100.100.100.200:80, by alibabacloud-credentials' own ECS provider.

The address cannot be borrowed on a shared machine, so the child runs in a
network namespace of its own (``unshare -n``, root only) with the address on
its loopback; the test skips, saying why, where that is not possible.
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
    import json, subprocess, urllib.error, urllib.request
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(
        ["ip", "addr", "add", "100.100.100.200/32", "dev", "lo"], check=True
    )
    from envelope_mq.kms_emulator import Emulator
    from alibabacloud_credentials.provider.ecs_ram_role import (
        EcsRamRoleCredentialsProvider,
    )
    from alibabacloud_kms20160120.client import Client
    from alibabacloud_kms20160120 import models
    from alibabacloud_tea_openapi.models import Config

    KEY = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    seed = {
        "keys": [{"key_id": KEY}],
        "roles": [{"arn": "acs:ram::1234567890123456:role/emq-ecs",
                   "actions": ["GenerateDataKey", "Decrypt"]}],
    }
    result = {}
    with Emulator(seed=seed, ecs_role="emq-ecs") as emu:
        try:  # IMDSv1 (no token) is refused
            urllib.request.urlopen(
                "http://100.100.100.200/latest/meta-data/ram/security-credentials/",
                timeout=5,
            )
        except urllib.error.HTTPError as exc:
            result["without_token"] = exc.code
        provider = EcsRamRoleCredentialsProvider(disable_imds_v1=True)
        got = provider.get_credentials()
        result["access_key_id"] = got.get_access_key_id()
        client = Client(Config(
            access_key_id=got.get_access_key_id(),
            access_key_secret=got.get_access_key_secret(),
            security_token=got.get_security_token(),
            region_id="cn-hangzhou", endpoint=emu.endpoint, protocol="http",
        ))
        made = client.generate_data_key(models.GenerateDataKeyRequest(key_id=KEY))
        result["key_id"] = made.body.key_id
    print(json.dumps(result))
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


def test_the_ecs_provider_reads_role_credentials_over_imdsv2_at_the_real_address() -> (
    None
):
    reason = _namespace_unavailable()
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["without_token"] == 401
    assert answer["access_key_id"].startswith("STS.")
    assert answer["key_id"] == "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
