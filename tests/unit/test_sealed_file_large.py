"""200 MiB through seal and unseal over a pipe, in constant memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter so that the peak RSS belongs to this job alone.
# Sealing writes into a pipe that unsealing reads in another thread: nothing
# holds the file, so memory can only stay bounded if both sides stream.
SCRIPT = textwrap.dedent(
    """
    import hashlib, io, json, os, resource, sys, threading
    from envelope_mq.shared.kms import InMemoryKeyProvider
    from envelope_mq.shared.sealed_file import seal_stream, unseal_stream

    TOTAL = 200 * 1024 * 1024
    CHUNK = os.urandom(1024 * 1024)

    class Source(io.RawIOBase):
        def __init__(self):
            self.left = TOTAL
            self.digest = hashlib.sha256()
        def readable(self):
            return True
        def readinto(self, buffer):
            view = memoryview(buffer)
            count = min(len(view), self.left, len(CHUNK))
            view[:count] = CHUNK[:count]
            self.digest.update(view[:count])
            self.left -= count
            return count

    class Sink:
        def __init__(self):
            self.digest = hashlib.sha256()
            self.size = 0
        def write(self, data):
            self.digest.update(data)
            self.size += len(data)
            return len(data)

    provider = InMemoryKeyProvider(["master"])
    source, sink = Source(), Sink()
    read_fd, write_fd = os.pipe()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def produce():
        with open(write_fd, "wb") as out:
            seal_stream(source, out, provider, "master", {"big": "yes"})

    thread = threading.Thread(target=produce)
    thread.start()
    with open(read_fd, "rb") as src:
        unseal_stream(src, sink, provider)
    thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({
        "same": source.digest.digest() == sink.digest.digest(),
        "size": sink.size,
        "growth_kib": after - before,
    }, sys.stdout)
    """
)


@pytest.mark.slow
def test_200_mib_stream_round_trips_in_bounded_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(done.stdout)
    assert result["same"] is True
    assert result["size"] == 200 * 1024 * 1024
    # ru_maxrss is in KiB on Linux. Two 64 KiB segment buffers and the pipe
    # need well under a MiB; 16 MiB of slack is for the allocator.
    assert result["growth_kib"] < 16 * 1024
