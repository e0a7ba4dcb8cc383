"""An in-process fault-injecting TCP proxy for tests, in Toxiproxy's vocabulary.

Put it between a client and RabbitMQ (or the KMS emulator) and add *toxics*:

==============  ============================================================
``Latency``     delay every chunk by ``latency_ms`` ± ``jitter_ms``
``Bandwidth``   cap the rate at ``rate_kb`` kilobytes (1000 bytes) per second
``Timeout``     drop all data; close the connection after ``timeout_ms``
                (0: a black hole, held until the toxic is removed)
``Hold``        keep all data until the toxic is removed, then deliver it
``ResetPeer``   reset (TCP RST) the connection now, or after ``timeout_ms``
                (0: new connections too, as soon as they are accepted)
``Slicer``      split writes into chunks of ``average_size`` ± variation bytes
                with ``delay_us`` between them
``LimitData``   close the connection once ``bytes`` have passed
==============  ============================================================

Each toxic acts on one direction: ``upstream`` (client to server) or
``downstream`` (server to client, the default, as in Toxiproxy), and applies to
each connection with probability ``toxicity`` (drawn once per connection).
``down()``/``up()`` refuse new connections and drop the existing ones, then
accept again; ``ResetPeer()`` instead accepts new connections and resets them
(a cut and a refusal in one, undone by removing it). The proxy runs its asyncio
loop in a background thread, so plain synchronous tests drive it::

    with FaultProxy(("127.0.0.1", 5672)) as proxy:
        url = proxy.rewrite("amqp://guest:guest@127.0.0.1:5672/%2F")
        with proxy.toxic(Latency(200, jitter_ms=20)):
            ...
        proxy.reset_all()

The proxy only counts and forwards bytes; it never logs their content.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from envelope_mq.testing.faultproxy.link import Link, LinkOwner, abort_with_rst, draw
from envelope_mq.testing.faultproxy.toxics import Installed, ResetPeer, Stream, Toxic

__all__ = ["FaultProxy", "ProxyStats"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started (a snapshot)."""

    accepted: int  # client connections accepted
    open: int  # links open now
    upstream_failures: int  # accepted, but the server could not be reached
    resets: int  # links (or new connections) reset by reset_all() or ResetPeer
    closed_by_toxic: int  # links closed by Timeout or LimitData
    dropped_by_down: int  # links dropped by down()
    bytes_upstream: int  # bytes delivered client -> server
    bytes_downstream: int  # bytes delivered server -> client
    bytes_dropped: int  # bytes swallowed by a Timeout toxic


class FaultProxy(LinkOwner):
    """A TCP proxy from ``listen`` (port 0: any free port) to ``upstream``."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        seed: int | None = None,
        name: str = "proxy",
    ) -> None:
        self.upstream = upstream
        self.name = name
        self._listen = listen
        self._rng = random.Random(seed)  # toxicity draws, jitter, slice sizes
        self._toxics: dict[str, Installed] = {}
        self._links: set[Link] = set()
        self._counters = dict.fromkeys(
            (
                "accepted",
                "upstream_failures",
                "resets",
                "closed_by_toxic",
                "dropped_by_down",
                "bytes_upstream",
                "bytes_downstream",
                "bytes_dropped",
            ),
            0,
        )
        self._names = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port = 0
        self._enabled = False

    # -- lifecycle (called from the test's thread) -------------------------

    def start(self) -> FaultProxy:
        """Start the loop thread and listen; returns self."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"faultproxy-{self.name}", daemon=True
        )
        self._thread.start()
        self._call(self._listen_now())
        return self

    def close(self) -> None:
        """Drop every link, stop listening and stop the loop thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CALL_TIMEOUT)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- where clients connect ---------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on."""
        return self._listen[0]

    @property
    def port(self) -> int:
        """The port the proxy listens on (known after start())."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port`` of the proxy, e.g. for KMS_ENDPOINT."""
        return f"{self.host}:{self.port}"

    def rewrite(self, url: str) -> str:
        """``url`` with host and port replaced by the proxy's (user, path kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}{self.endpoint}"))

    # -- faults --------------------------------------------------------------

    def add(
        self,
        toxic: Toxic,
        *,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> str:
        """Install ``toxic`` on every link, present and future; returns its name."""
        if stream not in ("upstream", "downstream"):
            raise ValueError(f"stream must be upstream or downstream, not {stream!r}")
        if not 0.0 <= toxicity <= 1.0:
            raise ValueError("toxicity is a probability between 0 and 1")
        label = name or f"{type(toxic).__name__.lower()}-{next(self._names)}"
        installed = Installed(label, toxic, stream, toxicity)
        return self._call(self._add(installed))

    def remove(self, name: str) -> None:
        """Remove one toxic; a Hold's data flows on, a Timeout's stays dropped."""
        self._call(self._remove(name))

    def clear(self) -> None:
        """Remove every toxic."""
        for name in list(self._toxics):
            self.remove(name)

    @contextlib.contextmanager
    def toxic(
        self, toxic: Toxic, *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> Iterator[str]:
        """Install ``toxic`` for the duration of a ``with`` block."""
        name = self.add(toxic, stream=stream, toxicity=toxicity)
        try:
            yield name
        finally:
            self.remove(name)

    def reset_all(self) -> int:
        """Reset (RST) every open link now; returns how many were reset."""
        return self._call(self._reset_all())

    def down(self) -> None:
        """Stop listening (new connections are refused) and drop every link."""
        self._call(self._stop_listening(counter="dropped_by_down"))

    def up(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen_now())

    @property
    def enabled(self) -> bool:
        """False between down() and up()."""
        return self._enabled

    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return self._call(self._snapshot())

    def wait_for_links(self, at_least: int, timeout: float) -> bool:
        """Poll until ``at_least`` links are open or ``timeout`` seconds pass."""
        return self._call(self._wait_for_links(at_least, timeout), timeout + 5)

    # -- LinkOwner: what a Link asks of its proxy (loop thread) --------------

    def toxics_for(self, link: Link, stream: Stream) -> list[Installed]:
        """The toxics that act on ``link`` in ``stream``, in installation order."""
        return [
            t
            for t in self._toxics.values()
            if t.stream == stream and link.applies(t.name)
        ]

    def count(self, counter: str, amount: int = 1) -> None:
        """Add to one of the counters behind ProxyStats."""
        self._counters[counter] += amount

    def rng(self) -> random.Random:
        """The proxy's random source (seeded when the proxy was)."""
        return self._rng

    def forget(self, link: Link) -> None:
        """A link has closed."""
        self._links.discard(link)

    # -- loop-thread side ----------------------------------------------------

    def _call(
        self, coro: Coroutine[Any, Any, _T], timeout: float = _CALL_TIMEOUT
    ) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen_now(self) -> None:
        if self._server is not None:
            return
        host, port = self._listen[0], self._port or self._listen[1]
        self._server = await asyncio.start_server(
            self._accept, host, port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._enabled = True
        logger.debug(
            "%s listening on %s -> %s", self.name, self.endpoint, self.upstream
        )

    async def _stop_listening(self, counter: str | None) -> None:
        server, self._server = self._server, None
        self._enabled = False
        if server is not None:
            server.close()
            await server.wait_closed()
        links = list(self._links)
        for link in links:
            link.close(reset=False, counter=counter)
        for link in links:
            await link.wait_closed()

    async def _shutdown(self) -> None:
        await self._stop_listening(counter=None)
        # Let the transports finish closing, so nothing is left for the GC to
        # warn about once the loop stops.
        for _ in range(3):
            await asyncio.sleep(0)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.count("accepted")
        hits = {name: draw(t, self._rng) for name, t in self._toxics.items()}
        if any(
            hits[name] and isinstance(t.toxic, ResetPeer) and t.toxic.timeout_ms == 0
            for name, t in self._toxics.items()
        ):
            # Reset before dialling the server: the client sees its connection
            # die right after the handshake, as fast as a local RST can be.
            self.count("resets")
            abort_with_rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.count("upstream_failures")
            writer.close()
            return
        link = Link(self, (reader, writer), (up_reader, up_writer))
        self._links.add(link)
        for name, installed in list(self._toxics.items()):
            # a toxic added while the server was dialled has no draw yet
            link.attach(installed, hits.get(name))
        link.start()

    async def _add(self, installed: Installed) -> str:
        self._toxics[installed.name] = installed
        for link in list(self._links):
            link.attach(installed)
        return installed.name

    async def _remove(self, name: str) -> None:
        if self._toxics.pop(name, None) is None:
            raise KeyError(f"no toxic named {name!r}")
        for link in list(self._links):
            link.detach(name)

    async def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.close(reset=True, counter="resets")
        for link in links:
            await link.wait_closed()
        return len(links)

    async def _snapshot(self) -> ProxyStats:
        return ProxyStats(open=len(self._links), **self._counters)

    async def _wait_for_links(self, at_least: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._links) < at_least:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
