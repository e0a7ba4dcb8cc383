"""One data key, wrapped in more than one KMS region: write every copy, read any.

Alibaba Cloud KMS keys do not span regions, so a region's outage stops every
reader of keys wrapped there. A writer can make the same data key openable
elsewhere: GenerateDataKey under its primary master key, then Encrypt of the
key's plaintext under a master key of each other region (:class:`MultiRegionKeys`).
A reader tries the copies in an order it chooses, its own region first
(:class:`RegionalUnwrapCache`), and moves on when a region does not answer.

:class:`RegionHealth` keeps a dead region from costing a timeout per call:
a region that failed is tried last (writers skip its copy) until a cooldown
has passed. :func:`region_clients` makes one KMS client per configured region.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import (
    ConfigError,
    KmsCallerError,
    KmsError,
    KmsRequestError,
    KmsUnavailableError,
)
from envelope_mq.shared.kms import (
    AliyunKms,
    Credentials,
    DataKey,
    KeyProvider,
    KmsClient,
    UnwrappedKey,
    WrappedCopy,
    key_id_of,
    kms_from_settings,
)
from envelope_mq.shared.observability.metrics import NULL_METRICS, MetricsHooks
from envelope_mq.shared.wire_v2 import MAX_COPIES

__all__ = [
    "DEFAULT_COOLDOWN",
    "NO_REGION_CODE",
    "KeyWrapper",
    "MultiRegionKeys",
    "MultiRegionStats",
    "RegionCache",
    "RegionClients",
    "RegionHealth",
    "RegionKey",
    "RegionalKeyResolver",
    "RegionalUnwrapCache",
    "consumer_regions",
    "region_clients",
    "writer_keys_from_settings",
    "writer_regions",
]

logger = logging.getLogger(__name__)

# What wire format v2 can carry: copies per data key, bytes per region label.
_MAX_LABEL_BYTES = 255
# A message none of whose copies is in a region this reader can ask.
NO_REGION_CODE = "EMQ.NoCopyForRegion"
# How long a region that failed goes last (and writers skip it).
DEFAULT_COOLDOWN = 10.0
Clock = Callable[[], float]


class KeyWrapper(KeyProvider, Protocol):
    """A KeyProvider that can also wrap an existing data key (KMS Encrypt)."""

    def wrap_data_key(
        self, key_id: str, plaintext: bytes, context: Mapping[str, str]
    ) -> tuple[str, str]:
        """Wrap ``plaintext`` under ``key_id``: (the KeyId KMS reported, blob)."""
        ...


class RegionHealth:
    """A circuit breaker per region: which ones failed within ``cooldown`` seconds.

    It only orders, never refuses: a region marked down is tried after the
    others (a reader) or not asked for an extra copy (a writer) until its
    cooldown has passed, then asked again; one answer clears it.
    """

    def __init__(
        self, cooldown: float = DEFAULT_COOLDOWN, *, clock: Clock = time.monotonic
    ) -> None:
        if not cooldown > 0:
            raise ConfigError("the region cooldown must be positive")
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: dict[str, float] = {}

    def up(self, region: str) -> bool:
        """Whether ``region`` is worth asking first."""
        until = self._down_until.get(region)
        return until is None or self._clock() >= until

    def failed(self, region: str) -> None:
        """``region`` did not answer (after its client's own retries)."""
        with self._lock:
            first = region not in self._down_until
            self._down_until[region] = self._clock() + self._cooldown
        if first:
            logger.warning(
                "KMS region %s unavailable; trying it last for %.0f s",
                region,
                self._cooldown,
                extra={"event": "kms_region_down", "region": region},
            )

    def answered(self, region: str) -> None:
        """``region`` answered (a refusal is an answer too)."""
        if region in self._down_until:
            with self._lock:
                back = self._down_until.pop(region, None) is not None
            if back:
                logger.info(
                    "KMS region %s answers again",
                    region,
                    extra={"event": "kms_region_up", "region": region},
                )

    def down(self) -> list[str]:
        """The regions marked down now."""
        return [r for r in list(self._down_until) if not self.up(r)]


# ---- writing: one data key, a copy per region --------------------------------


@dataclass(frozen=True)
class RegionKey:
    """A region a writer wraps data keys in: its name, its KMS, its master key.

    The primary region's ``key_id`` may be left empty: the key the sealer
    names is used there.
    """

    region: str
    provider: KeyWrapper
    key_id: str = ""


@dataclass(frozen=True)
class MultiRegionStats:
    """Counters of a :class:`MultiRegionKeys` since it was made."""

    data_keys: int  # data keys made
    failovers: int  # made in another region than the primary
    copies_missing: Mapping[str, int]  # region -> data keys sealed without its copy


class MultiRegionKeys:
    """A KeyProvider whose data keys carry a wrapped copy per region.

    GenerateDataKey in the first region (the primary, under the key the
    sealer names), then one Encrypt of the same plaintext key in each other
    region, under that region's key and with the same EncryptionContext. The
    copies are made once per data key: the data key cache keeps them with it,
    so no message costs an Encrypt.

    When the primary does not answer (KmsUnavailableError after its client's
    retries) the key is generated in the next region that does, and wrapped
    in the rest. A refusal (KmsRequestError: no such key, no permission) is
    not an outage: it is raised, nothing is sealed.

    A copy that cannot be made (its region is down or refuses) is left out:
    the key still opens in every other region, and messages keep flowing
    while one region is away. Each missing copy is logged and counted
    (:meth:`stats`); readers who only have that region cannot open those
    messages until they can reach another. With ``require_all_copies`` the
    data key is refused instead (the error is raised, nothing is sealed):
    every message opens in every region, and publishing stops while any
    region is down.
    """

    def __init__(
        self,
        regions: Sequence[RegionKey],
        *,
        require_all_copies: bool = False,
        health: RegionHealth | None = None,
        metrics: MetricsHooks | None = None,
    ) -> None:
        if not 1 <= len(regions) <= MAX_COPIES:
            raise ConfigError(f"a data key has 1 to {MAX_COPIES} wrapped copies")
        for region in regions:
            if not 1 <= len(region.region.encode("utf-8")) <= _MAX_LABEL_BYTES:
                raise ConfigError(f"a region name is 1..255 bytes: {region.region!r}")
        for extra in regions[1:]:
            if not extra.key_id:
                raise ConfigError(f"region {extra.region!r} needs a master key id")
        self._regions = tuple(regions)
        self._require_all = require_all_copies
        self.health = health or RegionHealth()
        self._metrics = NULL_METRICS if metrics is None else metrics
        self._lock = threading.Lock()
        self._data_keys = self._failovers = 0
        self._missing: Counter[str] = Counter()

    def __repr__(self) -> str:
        names = ", ".join(r.region for r in self._regions)
        return f"MultiRegionKeys({names})"

    def stats(self) -> MultiRegionStats:
        """A snapshot of the counters."""
        with self._lock:
            return MultiRegionStats(
                self._data_keys, self._failovers, dict(self._missing)
            )

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh data key under ``key_id`` (primary) with a copy per region.

        Raises:
            KmsUnavailableError: no region could generate one; or, with
                ``require_all_copies``, a copy could not be made.
            KmsRequestError: a region refused (a configuration error).
        """
        order = [
            RegionKey(r.region, r.provider, r.key_id if i else key_id or r.key_id)
            for i, r in enumerate(self._regions)
        ]
        # Regions that failed lately go last: a dead primary costs one try per
        # cooldown, not one per data key.
        tries = [r for r in order if self.health.up(r.region)]
        tries += [r for r in order if r not in tries]
        made: DataKey | None = None
        maker: RegionKey | None = None
        last: KmsUnavailableError | None = None
        for region in tries:
            try:
                made = region.provider.generate_data_key(region.key_id, context)
            except KmsUnavailableError as exc:
                self.health.failed(region.region)
                last = exc
                if self._require_all:
                    raise
                continue
            self.health.answered(region.region)
            maker = region
            break
        if made is None or maker is None:
            raise last or KmsUnavailableError("no KMS region", code="EMQ.RegionDown")
        if maker is not order[0]:
            with self._lock:
                self._failovers += 1
            self._metrics.kms_failover(maker.region)
            logger.warning(
                "data key generated in KMS region %s: %s did not answer",
                maker.region,
                order[0].region,
                extra={"event": "data_key_failover", "region": maker.region},
            )
        extra = tuple(
            copy
            for copy in (
                self._copy(region, made.plaintext, context)
                for region in order
                if region is not maker
            )
            if copy is not None
        )
        with self._lock:
            self._data_keys += 1
        return DataKey(
            made.plaintext, made.wrapped, made.key_id, region=maker.region, extra=extra
        )

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Decrypt in the primary region (a writer has no use for it)."""
        return self._regions[0].provider.decrypt_data_key(wrapped, context)

    def _copy(
        self, region: RegionKey, plaintext: bytes, context: Mapping[str, str]
    ) -> WrappedCopy | None:
        """The copy wrapped in ``region``, or None when it cannot be made now."""
        if not self.health.up(region.region):
            error: KmsError = KmsUnavailableError(
                f"KMS region {region.region} is marked down",
                code="EMQ.RegionDown",
            )
        else:
            try:
                key_id, blob = region.provider.wrap_data_key(
                    region.key_id, plaintext, context
                )
            except KmsUnavailableError as exc:
                self.health.failed(region.region)
                error = exc
            except KmsError as exc:
                self.health.answered(region.region)
                error = exc
            else:
                self.health.answered(region.region)
                return WrappedCopy(region.region, key_id, blob)
        if self._require_all:
            raise error
        with self._lock:
            self._missing[region.region] += 1
        self._metrics.kms_copy_missing(region.region)
        logger.warning(
            "data key sealed without its copy for KMS region %s (%s)",
            region.region,
            error.code or type(error).__name__,
            extra={
                "event": "data_key_copy_missing",
                "region": region.region,
                "kms_code": error.code,
            },
        )
        return None


# ---- reading: the first copy that opens ----------------------------------------


class RegionCache(Protocol):
    """What a reader needs of one region's unwrap cache (UnwrapCache is one)."""

    def unwrap(self, wrapped: str, context: Mapping[str, str]) -> UnwrappedKey:
        """The plaintext of ``wrapped``, from the cache or KMS."""
        ...

    def unwrap_cached(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey | None:
        """The plaintext of ``wrapped`` on a hit; never calls KMS."""
        ...


class RegionalUnwrapCache:
    """A KeyUnwrapper over one unwrap cache per region, tried in ``regions`` order.

    ``regions`` is the reader's order (its own region first) of (name, cache)
    pairs; ``default`` the region that copies labelled ``""`` (the writer's
    default KMS) mean, the first one unless given. For a message it:

    1. answers from any region's cache that holds one of its copies;
    2. else asks each region with a copy, in order (regions that failed
       lately last): a region that does not answer (KmsUnavailableError) is
       marked down and the next is asked; a refusal of the copy
       (KmsRequestError) moves on to the next copy too;
    3. raises KmsUnavailableError when no copy opened and some region did not
       answer (the message waits: its copy there may open later), else the
       first refusal (the message is refused by every region that has a copy).

    Caller errors (:class:`KmsCallerError`: this reader's credentials) are
    raised at once, and so are the codes in ``deferrals`` (a local budget
    saying "not now", which says nothing of the region). Each region's cache
    keeps its own single flight and negative cache; a key is cached by the
    copy that was unwrapped.
    """

    def __init__(
        self,
        regions: Sequence[tuple[str, RegionCache]],
        *,
        default: str | None = None,
        deferrals: Iterable[str] = (),
        health: RegionHealth | None = None,
    ) -> None:
        if not regions:
            raise ConfigError("a regional unwrap cache needs at least one region")
        names = [name for name, _ in regions]
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"region names must be unique and non-empty: {names}")
        self._order = tuple(regions)
        self._caches = dict(regions)
        self._default = names[0] if default is None else default
        if self._default not in self._caches:
            raise ConfigError(f"the default region {self._default!r} is not listed")
        self._deferrals = frozenset(deferrals)
        self.health = health or RegionHealth()

    def __repr__(self) -> str:
        return f"RegionalUnwrapCache({', '.join(n for n, _ in self._order)})"

    @property
    def regions(self) -> tuple[str, ...]:
        """The region names, in the order they are asked."""
        return tuple(name for name, _ in self._order)

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        """The first copy that opens, and what KMS said for it (see the class).

        Raises:
            KmsUnavailableError: no copy opened and a region did not answer.
            KmsCallerError: a region refused this reader itself.
            KmsRequestError: every copy this reader can reach was refused, or
                none is in a region it knows (code ``EMQ.NoCopyForRegion``).
        """
        candidates = self._candidates(copies)
        for _name, cache, copy in candidates:
            found = cache.unwrap_cached(copy.blob, context)
            if found is not None:
                return copy, found
        unavailable: KmsUnavailableError | None = None
        refused: KmsRequestError | None = None
        for name, cache, copy in candidates:
            try:
                unwrapped = cache.unwrap(copy.blob, context)
            except KmsCallerError:
                raise
            except KmsUnavailableError as exc:
                if exc.code in self._deferrals:
                    raise
                self.health.failed(name)
                unavailable = unavailable or exc
                continue
            except KmsRequestError as exc:
                self.health.answered(name)
                refused = refused or exc
                if len(candidates) > 1:
                    logger.warning(
                        "KMS region %s refused its copy of a data key (%s); "
                        "trying the next copy",
                        name,
                        exc.code,
                        extra={
                            "event": "kms_copy_refused",
                            "region": name,
                            "kms_code": exc.code,
                        },
                    )
                continue
            self.health.answered(name)
            return copy, unwrapped
        if unavailable is not None:
            raise unavailable
        if refused is not None:
            raise refused
        labels = ", ".join(sorted({c.region or "(default)" for c in copies}))
        raise KmsRequestError(
            f"no copy of the data key in a KMS region this reader uses "
            f"({', '.join(self.regions)}); the message's: {labels}",
            code=NO_REGION_CODE,
        )

    def unwrap_any_cached(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey] | None:
        """Like :meth:`unwrap_any` on a cache hit; None otherwise, never calls KMS."""
        for _name, cache, copy in self._candidates(copies):
            found = cache.unwrap_cached(copy.blob, context)
            if found is not None:
                return copy, found
        return None

    def _candidates(
        self, copies: Sequence[WrappedCopy]
    ) -> list[tuple[str, RegionCache, WrappedCopy]]:
        """(region, cache, copy) in this reader's order; regions down last."""
        ordered = [
            (name, cache, copy)
            for name, cache in self._order
            for copy in copies
            if (copy.region or self._default) == name
        ]
        if len(ordered) < 2:
            return ordered
        up = [c for c in ordered if self.health.up(c[0])]
        return up + [c for c in ordered if c not in up]


# ---- configuration -------------------------------------------------------------


class RegionClients:
    """One KMS client per region name, made from Settings; closes them all."""

    def __init__(self, clients: Mapping[str, KmsClient]) -> None:
        self._clients = dict(clients)

    def __getitem__(self, region: str) -> KmsClient:
        return self._clients[region]

    def items(self) -> list[tuple[str, KmsClient]]:
        """(region, client) pairs, in the order they were made."""
        return list(self._clients.items())

    def __repr__(self) -> str:
        return f"RegionClients({', '.join(self._clients)})"

    def close(self) -> None:
        """Close every client (idempotent)."""
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> RegionClients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def consumer_regions(settings: Settings) -> tuple[str, ...]:
    """The regions a reader asks, in order: KMS_REGIONS, else its own first.

    Without KMS_REGIONS: ALIBABA_CLOUD_REGION_ID, then the regions of
    KMS_REGION_ENDPOINTS in the order written.
    """
    if settings.kms_regions:
        return settings.kms_regions
    own = settings.region_id
    return (own, *(r for r, _ in settings.kms_region_endpoints if r != own))


def region_clients(
    settings: Settings, regions: Iterable[str], **options: object
) -> RegionClients:
    """A KMS client per region; credentials and CA file are the settings' own.

    The settings' own region (ALIBABA_CLOUD_REGION_ID) is the client of
    :func:`kms_from_settings` (KMS_ENDPOINT or KMS_INSTANCE_ENDPOINT); any
    other region's is the shared gateway at its KMS_REGION_ENDPOINTS entry,
    or the region's public endpoint ``kms.<region>.aliyuncs.com``.
    ``options`` (timeouts, retries) go to every client.
    """
    endpoints = dict(settings.kms_region_endpoints)
    clients: dict[str, KmsClient] = {}
    credentials: Credentials | None = None
    try:
        for region in dict.fromkeys(regions):
            if region == settings.region_id and (
                region not in endpoints or settings.kms_instance_endpoint
            ):
                clients[region] = kms_from_settings(settings, **options)
                continue
            if credentials is None:
                credentials = Credentials.from_settings(settings)
            clients[region] = AliyunKms(
                region_id=region,
                credentials=credentials,
                endpoint=endpoints.get(region),
                endpoint_name=f"KMS_REGION_ENDPOINTS entry for {region}",
                ca_bundle=settings.kms_ca_file,
                **options,  # type: ignore[arg-type]
            )
    except BaseException:
        for client in clients.values():
            client.close()
        raise
    return RegionClients(clients)


def writer_regions(settings: Settings, clients: RegionClients) -> list[RegionKey]:
    """The primary region, then each KMS_WRAP_ALSO region with its key."""
    keys = [RegionKey(settings.region_id, clients[settings.region_id])]
    keys += [RegionKey(r, clients[r], key) for r, key in settings.kms_wrap_also]
    return keys


def writer_keys_from_settings(
    settings: Settings, metrics: MetricsHooks | None = None
) -> tuple[KeyProvider, KmsClient | RegionClients]:
    """A writer's KeyProvider and what to close when done.

    The KMS client of :func:`kms_from_settings`; with KMS_WRAP_ALSO, a
    :class:`MultiRegionKeys` over a client per region (the primary is
    ALIBABA_CLOUD_REGION_ID), refusing incomplete keys with
    KMS_REQUIRE_ALL_COPIES; missing copies and failovers go to ``metrics``.
    """
    if not settings.kms_wrap_also:
        client = kms_from_settings(settings)
        return client, client
    names = [settings.region_id, *(r for r, _ in settings.kms_wrap_also)]
    clients = region_clients(settings, names)
    keys = MultiRegionKeys(
        writer_regions(settings, clients),
        require_all_copies=settings.kms_require_all_copies,
        metrics=metrics,
    )
    return keys, clients


class RegionalKeyResolver:
    """Names a key by DescribeKey in the region that has it (allow-key policies).

    A key ARN names its region; any other name is asked of each region in
    order, and the first answer wins.
    """

    def __init__(self, clients: Sequence[tuple[str, KmsClient]]) -> None:
        self._clients = list(clients)

    def describe_key_id(self, key: str) -> str:
        """The KeyId of ``key`` (key id, alias/NAME or ARN)."""
        if key.startswith("acs:kms:"):
            region = key.split(":")[2]
            for name, client in self._clients:
                if name == region:
                    return client.describe_key_id(key)
            return key_id_of(key)
        first: KmsError | None = None
        for _name, client in self._clients:
            try:
                return client.describe_key_id(key)
            except KmsCallerError:
                raise
            except KmsError as exc:
                first = first or exc
        raise first or KmsRequestError(f"no KMS region has {key}")
