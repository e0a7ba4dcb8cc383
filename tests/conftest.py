"""Project-wide test setup.

The broker and KMS emulator fixtures live in :mod:`envelope_mq.testing.plugin`,
which pytest loads through the ``pytest11`` entry point of the installed project.
When plugin autoloading is off (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1), load it here,
so our suite never depends on that setting.
"""

from __future__ import annotations

import pytest

_PLUGIN = "envelope_mq.testing.plugin"


def pytest_configure(config: pytest.Config) -> None:
    manager = config.pluginmanager
    if (
        manager.get_plugin("envelope_mq") is None
        and manager.get_plugin(_PLUGIN) is None
    ):
        manager.import_plugin(_PLUGIN)
