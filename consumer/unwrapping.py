"""How a consumer unwraps data keys, wired from Settings: one KMS, or several regions.

Both consumers (blocking and asyncio) build the same chain per KMS: the client,
instrumented, (kept alive), under the Decrypt budget, under an unwrap cache.
With more than one region (KMS_REGIONS, KMS_REGION_ENDPOINTS) there is one chain
per region, one budget shared by all, and a :class:`RegionalUnwrapCache` that
asks them in the configured order (shared/regions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from envelope_mq.consumer.budget import DECRYPT_BUDGET_CODE, DecryptBudget
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.consumer.keypolicy import KeyResolver
from envelope_mq.shared.config import Settings
from envelope_mq.shared.keycache import UnwrapCache
from envelope_mq.shared.kms import KeyProvider, kms_from_settings
from envelope_mq.shared.observability import MetricsHooks
from envelope_mq.shared.regions import (
    RegionalKeyResolver,
    RegionalUnwrapCache,
    consumer_regions,
    region_clients,
)

__all__ = ["Closeable", "KeyUnwrapping", "unwrapping_from_settings"]


class Closeable(Protocol):
    """What a consumer closes when it stops: its own KMS client(s)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class KeyUnwrapping:
    """What a consumer's ``from_settings`` wires in."""

    unwrapper: UnwrapCache | RegionalUnwrapCache
    keep_alive: KeepAliveProvider | None  # the blocking consumer's pump
    resolver: KeyResolver | None  # DescribeKey, for an allowed-key policy
    owned: Closeable | None  # made here: the consumer closes it


def unwrapping_from_settings(
    settings: Settings,
    hooks: MetricsHooks,
    *,
    provider: KeyProvider | None,
    max_decrypt_rate: float,
    keep_alive: bool,
) -> KeyUnwrapping:
    """The unwrap cache(s) and KMS client(s) ``settings`` ask for.

    ``provider`` (a caller's own) means one KMS, whatever the settings say of
    regions. ``keep_alive``: run Decrypt calls through a
    :class:`KeepAliveProvider` (the blocking consumer services its
    connection meanwhile).
    """
    regions = consumer_regions(settings)
    if provider is not None or len(regions) < 2:
        owned = None
        if provider is None:
            provider = owned = kms_from_settings(settings)
        client = hooks.instrument_provider(provider)
        kept = KeepAliveProvider(client) if keep_alive else None
        cache = UnwrapCache(
            DecryptBudget(kept or client, max_decrypt_rate),
            max_entries=settings.key_cache_size,
            ttl=settings.key_cache_ttl,
        )
        hooks.watch_cache(cache)
        resolver = provider if isinstance(provider, KeyResolver) else None
        return KeyUnwrapping(cache, kept, resolver, owned)
    clients = region_clients(settings, regions)
    try:
        kept = None
        budget: DecryptBudget | None = None
        caches = []
        for name, client in clients.items():
            unwrapper: KeyProvider = hooks.instrument_provider(client)
            if keep_alive:
                if kept is None:
                    unwrapper = kept = KeepAliveProvider(unwrapper)
                else:
                    unwrapper = kept.sharing(unwrapper)
            # One budget for every region: a flood of unknown keys costs the
            # same whichever region its blobs name.
            if budget is None:
                budget = limited = DecryptBudget(unwrapper, max_decrypt_rate)
            else:
                limited = budget.sharing(unwrapper)
            cache = UnwrapCache(
                limited,
                max_entries=settings.key_cache_size,
                ttl=settings.key_cache_ttl,
            )
            hooks.watch_cache(cache)
            caches.append((name, cache))
        regional = RegionalUnwrapCache(
            caches,
            default=settings.region_id if settings.region_id in regions else None,
            deferrals=(DECRYPT_BUDGET_CODE,),
        )
    except BaseException:
        clients.close()
        raise
    return KeyUnwrapping(regional, kept, RegionalKeyResolver(clients.items()), clients)
