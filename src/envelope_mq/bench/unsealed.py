"""The benchmark's "sealing off" side, from a repository checkout only.

The pass-through sealer (plaintext under real-sized x-emq-* headers) never
ships in the wheel: it lives at ``tests/bench_support/passthrough.py`` in the
repository. Run from a checkout (the editable install links back into it),
``envelope-mq bench`` loads that file by path and measures the sealing-off
rows; from an installed wheel there is no such file, and :func:`load_unsealed`
returns why, for the report to say so.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envelope_mq.consumer.outcome import EnvelopeOpener
from envelope_mq.producer import EncryptedPublisher

__all__ = ["PASSTHROUGH", "Unsealed", "load_unsealed"]

# Relative to the repository root.
PASSTHROUGH = Path("tests") / "bench_support" / "passthrough.py"
_MODULE = "envelope_mq_bench_passthrough"  # outside our namespace on purpose


@dataclass(frozen=True)
class Unsealed:
    """A publisher class that does not encrypt, and the opener that matches it."""

    publisher_class: type[EncryptedPublisher]
    opener: Callable[[str, Mapping[str, str]], EnvelopeOpener]


def load_unsealed(root: Path | None = None) -> Unsealed | str:
    """The sealing-off side from the checkout at ``root``, or why there is none.

    ``root`` defaults to the checkout this module was installed from (its real
    path, three folders up); an installed wheel has none.
    """
    if root is None:
        root = Path(__file__).resolve().parents[3]
    path = root / PASSTHROUGH
    if not path.is_file():
        return (
            f"not measured: the pass-through sealer ships only in a checkout "
            f"of the repository ({PASSTHROUGH})"
        )
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    if (
        spec is None or spec.loader is None
    ):  # pragma: no cover - a file path always has one
        return f"not measured: cannot load {path}"
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    publisher_class = type(
        "UnsealedPublisher",
        (EncryptedPublisher,),
        {
            "__doc__": "EncryptedPublisher with sealing off, through its private seam.",
            "_sealer_class": module.PassThroughSealer,
        },
    )
    return Unsealed(publisher_class, module.PassThroughOpener)
