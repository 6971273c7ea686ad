"""Sealing into a caller's buffer allocates no chunk-sized buffer of its own.

The processor seals every chunk into a pooled buffer counted in its memory budget
(`ChunkSealer.seal_into`).  One-shot zstd compression first wrote the frame to a new
buffer as long as the plaintext, which an incompressible chunk fills: ~9 MB of peak
resident memory outside the budget per chunk being sealed.  The frame now goes
straight into the pooled buffer, so what sealing adds is the compressor's own
context.  Measured in a fresh interpreter with the services' allocator settings:
the peak resident set (VmHWM, reset through /proc/self/clear_refs) while sealing an
incompressible 8 MiB chunk into a buffer already paged in.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sessions.client.launcher import REPO
from sessions.core import ChunkSealer, sealed_length_bound

MiB = 1 << 20
KEY, SID = bytes(range(32)), "01HZY3N4XK0000000000000000"

PROBE = """
import ctypes, mmap, os
from sessions.common.serve import tune_allocator
from sessions.core import ChunkSealer, sealed_length_bound
tune_allocator()
N = 8 << 20
sealer = ChunkSealer(bytes(range(32)), session_id="01HZY3N4XK0000000000000000")
plain = mmap.mmap(-1, N)
for at in range(0, N, 1 << 20):
    plain[at:at + (1 << 20)] = os.urandom(1 << 20)
out = mmap.mmap(-1, sealed_length_bound(N))
out.write(b"\\xaa" * len(out))

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))

ctypes.CDLL(None).malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = hwm()
sealed = sealer.seal_into(memoryview(plain), index=0, out=memoryview(out))
assert not sealed.compressed
print(hwm() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_sealing_an_incompressible_chunk_into_a_buffer_allocates_no_chunk() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,  # noqa: S603
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    grown_kib = int(proc.stdout.split()[-1])
    assert grown_kib < 6 * 1024, f"sealing grew the peak by {grown_kib} KiB"


def test_a_compression_given_up_midway_leaves_the_compressor_usable() -> None:
    sealer = ChunkSealer(KEY, session_id=SID)
    noise, text = os.urandom(2 * MiB), b"frame of a screen recording " * 40_000
    out = bytearray(sealed_length_bound(2 * MiB))
    for i in range(3):  # raw, then compressed, on the same thread's compressor
        raw = sealer.seal_into(noise, index=i, out=out)
        assert not raw.compressed and sealer.open(raw.data, index=i) == noise
        packed = sealer.seal_into(text, index=i, out=out)
        assert packed.compressed and sealer.open(packed.data, index=i) == text
        assert sealer.open(sealer.seal(text, index=i).data, index=i) == text


def _mixed(head: bytes, size: int) -> bytes:
    """Return `head`, then what compresses the other way: noise after zeros, zeros after noise."""
    tail = os.urandom(size - len(head)) if head.count(0) == len(head) else bytes(size - len(head))
    return head + tail


@pytest.mark.parametrize("size", [2, 1000, MiB])
def test_a_chunk_compressing_to_one_byte_less_is_compressed_otherwise_raw(size: int) -> None:
    """The frame is kept only when strictly shorter than the plaintext (format v1)."""
    sealer = ChunkSealer(KEY, session_id=SID)
    for plaintext in (bytes(size), os.urandom(size)):
        out = bytearray(sealed_length_bound(size))
        sealed = sealer.seal_into(plaintext, index=0, out=out)
        payload = sealed.sealed_length - 32 - 16
        assert payload < size if sealed.compressed else payload == size
        assert sealer.open(sealed.data, index=0) == plaintext


@pytest.mark.parametrize("head", ["zeros", "noise"])
def test_a_chunk_whose_start_misleads_still_seals_by_its_whole(head: str) -> None:
    """Streamed into the buffer, the frame is the whole chunk's whatever its start (zeros
    then noise, noise then zeros), and both are kept: each is shorter than the plaintext
    by about the zeros."""
    size = 3 * MiB
    start = bytes(512 << 10) if head == "zeros" else os.urandom(512 << 10)
    plaintext = _mixed(start, size)
    sealer = ChunkSealer(KEY, session_id=SID)
    sealed = sealer.seal_into(plaintext, index=1, out=bytearray(sealed_length_bound(size)))
    zeros = plaintext.count(0) - (size - plaintext.count(0)) // 256  # noise has some zeros
    assert sealed.compressed
    assert sealed.sealed_length - 32 - 16 < size - zeros + (64 << 10)
    assert sealer.open(sealed.data, index=1) == plaintext
