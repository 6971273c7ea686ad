"""Benchmark the core ingest pipeline against its primitives, on one core.

    python -m bench.core [--size-mib N] [--rounds R] [--json PATH]

Input: a deterministic, session-like byte stream generated here. Half of it is
screen-like frames: flat-colour windows, text-like rows, a small changing
"video" tile and a moving cursor, evolving frame to frame from a seeded PRNG.
The other half is incompressible bytes (seeded `random.Random.randbytes`). The
two are interleaved frame by frame.

For each candidate chunk size it measures, as medians over the rounds:

* pipeline: Chunker (64 KiB pieces, pooled buffers) -> ChunkSealer.seal_into a
  reused buffer (zstd at the default level when it shrinks, AES-256-GCM, leaf
  hash), single-threaded, as the processor runs it;
* primitives on exactly the bytes each one sees in the pipeline: zstd over the
  input, AES-256-GCM over the stored payloads (compressed or raw), SHA-256 over
  the sealed blobs.

It then reports the implied serial limit, input / (t_zstd + t_aes + t_sha), and
the ratio pipeline / limit (target >= 0.80). Throughputs are in MB/s
(10^6 B/s) of *input*, unless a column says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import cryptography
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sessions.core import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_ZSTD_LEVEL,
    HEADER_SIZE,
    Chunker,
    ChunkSealer,
)
from sessions.processor.buffers import ChunkBuffers

MiB = 1024 * 1024
MB = 1_000_000
CANDIDATE_CHUNK_MIB = (1, 2, 4, 8)
PIECE_SIZE = 64 * 1024  # a typical HTTP body read
ZSTD_LEVEL = DEFAULT_ZSTD_LEVEL  # the services' default
WITHIN = 0.03  # pick the smallest chunk size within 3% of the best pipeline throughput
SEED = 20240917

# --- input -----------------------------------------------------------------

WIDTH, HEIGHT, BPP = 1280, 720, 4  # BGRA frames: 3.5 MiB each
INK, PAPER = b"\x10\x10\x10\xff", b"\xf0\xf0\xf0\xff"
INK2, PAPER2 = b"\x40\x20\x10\xff", b"\xe0\xe8\xf8\xff"


def _fill_rect(frame: bytearray, x: int, y: int, rows: Sequence[bytes]) -> None:
    """Write `rows` (each a run of pixels) into `frame` at (x, y), clipped to the frame."""
    for dy, row in enumerate(rows[: max(0, HEIGHT - y)]):
        start = ((y + dy) * WIDTH + x) * BPP
        row = row[: (WIDTH - x) * BPP]
        frame[start : start + len(row)] = row


def _flat(colour: bytes, w: int, h: int) -> list[bytes]:
    """Return h rows of w pixels of one colour."""
    return [colour * w] * h


def _text_rows(rng: random.Random, w: int, h: int, fg: bytes, bg: bytes) -> list[bytes]:
    """Return h rows that look like text: 8-px glyph cells of fg/bg pixels, 16-px line pitch."""
    glyphs = [b"".join(fg if rng.random() < 0.35 else bg for _ in range(8)) for _ in range(48)]
    line = b"".join(rng.choice(glyphs) for _ in range(w // 8))
    out = []
    for dy in range(h):
        out.append(line if dy % 16 < 11 else bg * w)
        if dy % 16 == 15:
            line = b"".join(rng.choice(glyphs) for _ in range(w // 8))
    return out


def _base_frame(rng: random.Random) -> bytearray:
    """Return the first desktop frame: background, taskbar, two windows with text."""
    frame = bytearray(b"\x30\x50\x70\xff" * (WIDTH * HEIGHT))
    _fill_rect(frame, 0, HEIGHT - 40, _flat(b"\x20\x20\x20\xff", WIDTH, 40))
    _fill_rect(frame, 80, 60, _flat(PAPER, 700, 500))
    _fill_rect(frame, 90, 100, _text_rows(rng, 680, 440, INK, PAPER))
    _fill_rect(frame, 820, 120, _flat(PAPER2, 420, 420))
    _fill_rect(frame, 830, 150, _text_rows(rng, 400, 200, INK2, PAPER2))
    return frame


def _next_frame(frame: bytearray, rng: random.Random, n: int) -> None:
    """Evolve `frame` in place: a typed line, a scrolled text band, a video tile, the cursor."""
    _fill_rect(frame, 90, 100 + (n * 16) % 432, _text_rows(rng, 680, 16, INK, PAPER))
    _fill_rect(frame, 830, 360, _text_rows(rng, 400, 160, INK2, PAPER2))
    tile = rng.randbytes(160 * 90 * BPP)  # a small playing video: incompressible pixels
    _fill_rect(frame, 1040, 560, [tile[i : i + 640] for i in range(0, len(tile), 640)])
    cx, cy = rng.randrange(WIDTH - 16), rng.randrange(HEIGHT - 16)
    _fill_rect(frame, cx, cy, _flat(b"\x00\x00\x00\xff", 12, 16))


def make_input(total: int, *, seed: int = SEED) -> bytearray:
    """Return `total` deterministic bytes: screen frames interleaved with random blocks."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    noise = random.Random(seed + 1)  # noqa: S311
    out = bytearray()
    frame, n = _base_frame(rng), 0
    while len(out) < total:
        out += frame
        out += noise.randbytes(len(frame))
        n += 1
        _next_frame(frame, rng, n)
    del out[total:]
    return out


# --- measurements ----------------------------------------------------------


@dataclass
class Row:
    chunk_mib: int
    chunks: int
    payload_ratio: float  # payload bytes (what AES sees) / input bytes
    pipeline_mbps: float
    zstd_mbps: float  # over the input
    aes_mbps: float  # over the payload bytes it encrypts
    sha_mbps: float  # over the sealed bytes it hashes
    limit_mbps: float  # input / (t_zstd + t_aes + t_sha)
    ratio: float  # median over rounds of pipeline / limit, both measured in the same round


def time_pipeline(data: memoryview, chunk_size: int, sealer: ChunkSealer) -> float:
    """Return seconds to chunk, compress, seal and leaf-hash all of `data`.

    As the processor does it: chunk buffers come from a pool and go back once
    sealed, and each chunk is sealed into a reused buffer (`seal_into`).
    """
    pools = ChunkBuffers(chunk_size, keep=2)
    chunker = Chunker(chunk_size=chunk_size, allocate=pools.plain.acquire)
    out = pools.sealed.acquire()
    index = 0
    start = time.perf_counter()
    for off in range(0, len(data), PIECE_SIZE):
        for chunk in chunker.iter_feed(data[off : off + PIECE_SIZE]):
            sealer.seal_into(chunk, index=index, out=out)
            pools.plain.release(cast(memoryview, chunk))  # the pool's own buffer
            index += 1
    tail = chunker.flush()
    if tail is not None:
        sealer.seal_into(tail, index=index, out=out)
    return time.perf_counter() - start


def time_primitives(data: memoryview, chunk_size: int) -> tuple[float, float, float, int, int]:
    """Return (t_zstd, t_aes, t_sha, payload_bytes, sealed_bytes) over the pipeline's bytes.

    Each timed loop drops its outputs at once, as the pipeline does, so both pay
    the same allocator costs; the inputs of the next primitive are built untimed.
    """
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    chunks = [data[off : off + chunk_size] for off in range(0, len(data), chunk_size)]
    start = time.perf_counter()
    for c in chunks:
        cctx.compress(c)
    t_zstd = time.perf_counter() - start
    payloads: list[bytes | memoryview] = []
    for c in chunks:
        packed = cctx.compress(c)
        payloads.append(packed if len(packed) < len(c) else c)
    aead, nonce, header = AESGCM(bytes(32)), bytes(12), bytes(HEADER_SIZE)  # speed only
    aad = bytes(HEADER_SIZE + 32)
    start = time.perf_counter()
    for p in payloads:
        aead.encrypt(nonce, p, aad)
    t_aes = time.perf_counter() - start
    sealed = [aead.encrypt(nonce, p, aad) for p in payloads]
    start = time.perf_counter()
    for ct in sealed:
        h = hashlib.sha256(b"\x00")
        h.update(header)
        h.update(ct)
        h.digest()
    t_sha = time.perf_counter() - start
    payload_bytes = sum(len(p) for p in payloads)
    sealed_bytes = sum(HEADER_SIZE + len(ct) for ct in sealed)
    return t_zstd, t_aes, t_sha, payload_bytes, sealed_bytes


def _row(chunk_mib: int, n: int, samples: list[tuple[float, float, float, float, int, int]]) -> Row:
    """Return the Row of one chunk size from its per-round samples (medians)."""
    t_pipe, t_z, t_a, t_s, payload, sealed = (
        statistics.median(s[i] for s in samples) for i in range(6)
    )
    # Pair each pipeline run with the primitives measured right after it, so noise
    # on a shared machine hits both sides of one ratio alike.
    ratio = statistics.median((s[1] + s[2] + s[3]) / s[0] for s in samples)
    return Row(
        chunk_mib=chunk_mib, chunks=-(-n // (chunk_mib * MiB)), payload_ratio=payload / n,
        pipeline_mbps=n / t_pipe / MB, zstd_mbps=n / t_z / MB, aes_mbps=payload / t_a / MB,
        sha_mbps=sealed / t_s / MB, limit_mbps=n / (t_z + t_a + t_s) / MB, ratio=ratio,
    )


def measure(data: bytearray, *, rounds: int, chunk_mibs: Sequence[int]) -> list[Row]:
    """Return one Row per chunk size, from `rounds` interleaved rounds."""
    view = memoryview(data)
    sealer = ChunkSealer(os.urandom(32), session_id="bench", zstd_level=ZSTD_LEVEL)
    samples: dict[int, list[tuple[float, float, float, float, int, int]]] = {
        m: [] for m in chunk_mibs
    }
    for _ in range(rounds):
        for m in chunk_mibs:  # interleaved, so drift hits every size alike
            t_pipe = time_pipeline(view, m * MiB, sealer)
            samples[m].append((t_pipe, *time_primitives(view, m * MiB)))
    return [_row(m, len(data), samples[m]) for m in chunk_mibs]


def recommend(rows: Sequence[Row]) -> int:
    """Return the smallest chunk size (MiB) within WITHIN of the best pipeline throughput."""
    best = max(r.pipeline_mbps for r in rows)
    return min(r.chunk_mib for r in rows if r.pipeline_mbps >= (1 - WITHIN) * best)


# --- reporting -------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Return platform, CPU, Python and library versions."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from cryptography.hazmat.backends.openssl.backend import backend

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "zstandard": zstandard.__version__,
        "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
    }


def format_table(rows: Sequence[Row]) -> str:
    """Return the results as a fixed-width text table."""
    head = (
        f"{'chunk':>6} {'chunks':>6} {'payload':>8} {'pipeline':>9} {'zstd':>8} "
        f"{'aes*':>8} {'sha*':>8} {'limit':>8} {'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.chunk_mib:>4}Mi {r.chunks:>6} {r.payload_ratio:>8.3f} {r.pipeline_mbps:>9.1f} "
            f"{r.zstd_mbps:>8.1f} {r.aes_mbps:>8.1f} {r.sha_mbps:>8.1f} {r.limit_mbps:>8.1f} "
            f"{r.ratio:>6.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the parsed command line."""
    p = argparse.ArgumentParser(prog="python -m bench.core",
                                description="Benchmark the core ingest pipeline on one core.")
    p.add_argument("--size-mib", type=int, default=256, help="input size in MiB (default 256)")
    p.add_argument("--rounds", type=int, default=7, help="rounds; medians reported (default 7)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--chunk-mib", type=int, nargs="+", default=list(CANDIDATE_CHUNK_MIB),
        help="candidate chunk sizes in MiB (default 1 2 4 8)",
    )
    args = p.parse_args(argv)
    if args.size_mib < 1 or args.rounds < 1:
        p.error("--size-mib and --rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and return the results as a dict."""
    args = parse_args(argv)
    info = machine_info()
    for k, v in info.items():
        print(f"{k:>13}: {v}")
    start = time.perf_counter()
    data = make_input(args.size_mib * MiB)
    print(f"input: {args.size_mib} MiB generated in {time.perf_counter() - start:.1f}s, "
          f"zstd level {ZSTD_LEVEL}, {args.rounds} round(s), medians, MB/s = 10^6 B/s of input")
    rows = measure(data, rounds=args.rounds, chunk_mibs=args.chunk_mib)
    print(format_table(rows))
    print("aes*: MB/s over the payload bytes it encrypts; sha*: over the sealed bytes it hashes")
    print("limit = input / (t_zstd + t_aes + t_sha); ratio = median over rounds of")
    print("pipeline / limit measured in the same round (target >= 0.80)")
    chosen = recommend(rows)
    print(f"core alone: smallest chunk size within {WITHIN:.0%} of the best pipeline: "
          f"{chosen} MiB")
    default_mib = DEFAULT_CHUNK_SIZE // MiB
    default_row = next((r for r in rows if r.chunk_mib == default_mib), None)
    if default_row is not None:
        verdict = "PASS" if default_row.ratio >= 0.80 else "MISS"
        print(f"{verdict}  the default chunk size ({default_mib} MiB, chosen end to end with "
              f"bench.e2e) runs at {default_row.ratio:.2f} of the primitives' limit "
              "(target >= 0.80)")
    result = {
        "machine": info, "size_mib": args.size_mib, "rounds": args.rounds,
        "zstd_level": ZSTD_LEVEL, "piece_size": PIECE_SIZE,
        "rows": [asdict(r) for r in rows], "recommended_chunk_mib": chosen,
        "min_ratio": min(r.ratio for r in rows),
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
