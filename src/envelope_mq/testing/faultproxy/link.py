"""One proxied connection: two pipes (upstream, downstream) that apply the toxics.

Each pipe is a reader task and a writer task joined by a bounded queue, so a
delayed chunk never stops the next one from being read: with Latency, chunks
leave at arrival time + delay, in order, as in Toxiproxy, rather than one
delay per chunk in series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from typing import Protocol

from envelope_mq.testing.faultproxy.toxics import (
    Bandwidth,
    Hold,
    Installed,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    Stream,
    Timeout,
    Toxic,
)

__all__ = ["Link", "LinkOwner", "abort_with_rst", "draw"]

logger = logging.getLogger(__name__)

_CHUNK = 65536
_QUEUE_CHUNKS = 256  # bounded: a slow pipe pushes back on its sender
_BANDWIDTH_SLICE_S = 0.1  # a capped pipe writes 100 ms worth of bytes at a time
_Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_Item = tuple[float, bytes] | None


class LinkOwner(Protocol):
    """What a link needs from its proxy."""

    def toxics_for(self, link: Link, stream: Stream) -> list[Installed]:
        """The toxics acting on ``link`` in ``stream``, in installation order."""
        ...

    def count(self, counter: str, amount: int = 1) -> None:
        """Add to a statistics counter."""
        ...

    def rng(self) -> random.Random:
        """The random source for toxicity, jitter and slice sizes."""
        ...

    def forget(self, link: Link) -> None:
        """The link has closed."""
        ...


class Link:
    """A client connection and its connection to the server."""

    def __init__(self, owner: LinkOwner, client: _Pair, server: _Pair) -> None:
        self._owner = owner
        self._client = client
        self._server = server
        self._applies: dict[str, bool] = {}  # toxic name -> did toxicity pick us
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._passed: dict[str, int] = {}  # LimitData name -> bytes let through
        self._tasks: list[asyncio.Task[None]] = []
        self._finished: set[Stream] = set()
        self._toxic_removed = asyncio.Event()  # wakes pipes waiting on a Hold
        self.closed = False

    def applies(self, name: str) -> bool:
        """Whether the toxic called ``name`` acts on this link."""
        return self._applies.get(name, False)

    def attach(self, installed: Installed, hit: bool | None = None) -> None:
        """Record whether ``installed`` applies here (drawn unless ``hit`` is
        given); arm its timer if it has one."""
        if hit is None:
            hit = draw(installed, self._owner.rng())
        self._applies[installed.name] = hit
        toxic = installed.toxic
        if not hit:
            return
        if isinstance(toxic, ResetPeer):
            self._arm(installed.name, toxic.timeout_ms, reset=True)
        elif isinstance(toxic, Timeout) and toxic.timeout_ms > 0:
            self._arm(installed.name, toxic.timeout_ms, reset=False)

    def detach(self, name: str) -> None:
        """Forget a removed toxic (and disarm its timer)."""
        self._applies.pop(name, None)
        self._passed.pop(name, None)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._toxic_removed.set()

    def start(self) -> None:
        """Start forwarding in both directions."""
        loop = asyncio.get_running_loop()
        pipes: tuple[tuple[Stream, asyncio.StreamReader, asyncio.StreamWriter], ...] = (
            ("upstream", self._client[0], self._server[1]),
            ("downstream", self._server[0], self._client[1]),
        )
        for stream, reader, writer in pipes:
            queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
            self._tasks.append(loop.create_task(self._read(reader, queue)))
            self._tasks.append(loop.create_task(self._write(stream, queue, writer)))

    def close(self, *, reset: bool, counter: str | None = None) -> None:
        """Close both sockets, with a TCP RST when ``reset``; idempotent."""
        if self.closed:
            return
        self.closed = True
        if counter is not None:
            self._owner.count(counter)
        for timer in self._timers.values():
            timer.cancel()
        for _, writer in (self._client, self._server):
            if reset:
                abort_with_rst(writer)
            else:
                writer.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._owner.forget(self)

    async def wait_closed(self) -> None:
        """Wait until both pipes' tasks have ended (after close())."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the pipes -----------------------------------------------------------

    def _arm(self, name: str, timeout_ms: float, *, reset: bool) -> None:
        counter = "resets" if reset else "closed_by_toxic"
        self._timers[name] = asyncio.get_running_loop().call_later(
            timeout_ms / 1000, lambda: self.close(reset=reset, counter=counter)
        )

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Item]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                await queue.put((loop.time(), data))
        except OSError:
            self.close(reset=False)
            return
        await queue.put(None)

    async def _write(
        self, stream: Stream, queue: asyncio.Queue[_Item], writer: asyncio.StreamWriter
    ) -> None:
        try:
            while not self.closed:
                item = await queue.get()
                if item is None:
                    self._half_close(stream, writer)
                    return
                await self._deliver(stream, item[0], item[1], writer)
        except OSError:
            self.close(reset=False)
        except Exception:
            # A bug here must not vanish into an unretrieved task exception.
            logger.exception("fault proxy pipe failed")
            self.close(reset=False)

    async def _deliver(
        self, stream: Stream, arrived: float, data: bytes, writer: asyncio.StreamWriter
    ) -> None:
        await self._wait_while_held(stream)
        installed = self._owner.toxics_for(self, stream)
        toxics = [i.toxic for i in installed]
        if any(isinstance(t, Timeout) for t in toxics):
            self._owner.count("bytes_dropped", len(data))
            return
        await self._delay(arrived, toxics)
        data, limit_reached = self._limit(data, installed)
        rates = [t.rate_kb * 1000 for t in toxics if isinstance(t, Bandwidth)]
        slicer = next((t for t in toxics if isinstance(t, Slicer)), None)
        pieces = self._slice(data, slicer) if slicer else [data]
        for index, piece in enumerate(pieces):
            await self._send(stream, piece, writer, min(rates) if rates else None)
            if slicer and slicer.delay_us and index < len(pieces) - 1:
                await asyncio.sleep(slicer.delay_us / 1e6)
        if limit_reached:
            self.close(reset=False, counter="closed_by_toxic")

    async def _wait_while_held(self, stream: Stream) -> None:
        # Blocking the writer keeps the chunk and everything queued behind it,
        # in order; the reader goes on filling the bounded queue meanwhile.
        while any(
            isinstance(i.toxic, Hold) for i in self._owner.toxics_for(self, stream)
        ):
            self._toxic_removed.clear()
            await self._toxic_removed.wait()

    async def _delay(self, arrived: float, toxics: list[Toxic]) -> None:
        rng = self._owner.rng()
        delay_ms = sum(
            max(0.0, t.latency_ms + rng.uniform(-t.jitter_ms, t.jitter_ms))
            for t in toxics
            if isinstance(t, Latency)
        )
        # Counted from arrival, so queued chunks do not add their delays up.
        wait = arrived + delay_ms / 1000 - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _limit(self, data: bytes, installed: list[Installed]) -> tuple[bytes, bool]:
        reached = False
        for inst in installed:
            if isinstance(inst.toxic, LimitData):
                passed = self._passed.get(inst.name, 0)
                room = max(0, inst.toxic.bytes - passed)
                if room <= len(data):
                    data, reached = data[:room], True
                self._passed[inst.name] = passed + len(data)
        return data, reached

    def _slice(self, data: bytes, slicer: Slicer) -> list[bytes]:
        rng = self._owner.rng()
        pieces, start = [], 0
        while start < len(data):
            size = slicer.average_size + rng.randint(
                -slicer.size_variation, slicer.size_variation
            )
            pieces.append(data[start : start + size])
            start += size
        return pieces

    async def _send(
        self,
        stream: Stream,
        data: bytes,
        writer: asyncio.StreamWriter,
        rate: float | None,
    ) -> None:
        step = max(1, int(rate * _BANDWIDTH_SLICE_S)) if rate else max(1, len(data))
        for start in range(0, len(data), step):
            part = data[start : start + step]
            writer.write(part)
            await writer.drain()
            self._owner.count(f"bytes_{stream}", len(part))
            if rate:
                await asyncio.sleep(len(part) / rate)

    def _half_close(self, stream: Stream, writer: asyncio.StreamWriter) -> None:
        # Pass the sender's FIN on; the link ends when both sides have sent one.
        self._finished.add(stream)
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
        if len(self._finished) == 2:
            self.close(reset=False)


def draw(installed: Installed, rng: random.Random) -> bool:
    """Whether ``installed`` acts on one more link (its toxicity, drawn once)."""
    return installed.toxicity >= 1.0 or rng.random() < installed.toxicity


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close at once with SO_LINGER 0, which makes the kernel send a TCP RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    writer.transport.abort()
