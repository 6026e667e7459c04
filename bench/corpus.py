"""The bench's record corpus: realistic Live Stream hits with two bench fields.

Records come from the simulator's own generator (``HitFactory``), so the
direct scenario (consumers on the simulator) and the feeder-driven ones carry
the same kind of hit. Two fixed-width fields are spliced in right after
``"hitIdLow":``:

* ``hitIdLow`` is ``2**60 + seq`` (19 digits): the load generator recovers the
  sequence number from it (loss / duplicate check), and it keeps every record's
  ``hitIdHigh`` + ``hitIdLow`` unique, which lsproxy's de-duplication needs;
* ``"benchTs":<19 digits>``: the feeder's wall-clock write time in ns for the
  latency scenarios (the placeholder ``10**18`` means "not stamped").

Files (in ``<build>/corpus-<key>/``):

``base.bin`` / ``base.idx``
    ``BASE`` distinct records, each ending with CRLF, and per record
    ``<QIIII``: byte offset, length (with CRLF), offset of the hitIdLow digits,
    offset of the benchTs digits, 0. The feeder renders any sequence number
    from them (record ``seq % BASE``, digits patched), for the live feeds and
    for Nchan publishes.
``replay.gz`` / ``replay.idx``
    ``REPLAY`` records (seq 0 .. REPLAY-1) pre-compressed at ``LEVEL`` as
    gzip members, each ``BATCH`` records ending with a ``Z_SYNC_FLUSH``
    (what a Live Stream server's flushes look like); per batch ``<QQIIIIII``:
    compressed offset, uncompressed offset, compressed length, uncompressed
    length, records, CRC-32 of the uncompressed batch, first seq, 0. The last
    batch of each member carries the member's trailer, so looping the file is
    a valid multi-member gzip stream. REPLAY exceeds lsproxy's default
    de-duplication window (200,000 ids), so a loop never looks like a
    duplicate to it.

There are no empty records (lsproxy drops blank lines, Nchan would not), so
every server's output must be exactly the canonical byte stream: the records
in order, each followed by CRLF.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = 32768
REPLAY = 1 << 18  # 262,144 > lsproxy's default dedup window
BATCH = 16  # records per flushed batch (about 45 KB)
LEVEL = 6  # zlib's default level for the upstream's own compression
MEMBERS = 2  # compressed in parallel (zlib releases the GIL)
SEQ_BASE = 2**60
TS_PLACEHOLDER = 10**18
VERSION = 3

IDX = struct.Struct("<QIIII")
BATCH_IDX = struct.Struct("<QQIIIIII")


def _render_base(n: int) -> list[tuple[bytes, int, int]]:
    from lsproxy.simulator.hits import HitFactory

    factory = HitFactory("bench", report_suite="benchsuite", seed=7)
    out = []
    marker = b'"hitIdLow":'
    for i in range(n):
        line, _ = factory.render(i, 1_750_000_000 + i // 2000)
        line = line.rstrip(b"\r\n")
        at = line.index(marker) + len(marker)
        end = at
        while line[end : end + 1].isdigit():
            end += 1
        head = line[:at]
        tail = line[end:]
        record = (
            head + b"%019d" % (SEQ_BASE + i) + b',"benchTs":' + b"%019d" % TS_PLACEHOLDER + tail + b"\r\n"
        )
        seq_off = len(head)
        ts_off = seq_off + 19 + len(b',"benchTs":')
        out.append((record, seq_off, ts_off))
    return out


def _patch(record: bytes, seq_off: int, seq: int) -> bytes:
    return record[:seq_off] + b"%019d" % (SEQ_BASE + seq) + record[seq_off + 19 :]


def _compress_member(base: list[tuple[bytes, int, int]], first: int, count: int) -> tuple[bytes, list[tuple]]:
    comp = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
    parts: list[bytes] = []
    batches = []
    c_pos = 0
    for b_first in range(first, first + count, BATCH):
        n = min(BATCH, first + count - b_first)
        raw = b"".join(_patch(base[s % BASE][0], base[s % BASE][1], s) for s in range(b_first, b_first + n))
        out = comp.compress(raw) + comp.flush(zlib.Z_SYNC_FLUSH)
        if b_first + n == first + count:
            out += comp.flush(zlib.Z_FINISH)
        parts.append(out)
        batches.append((c_pos, len(out), len(raw), n, zlib.crc32(raw), b_first))
        c_pos += len(out)
    return b"".join(parts), batches


def ensure_corpus(build: Path, log=print) -> Path:
    """Build the corpus once (cached by content version); return its directory."""
    key = hashlib.sha256(json.dumps([VERSION, BASE, REPLAY, BATCH, LEVEL, MEMBERS]).encode()).hexdigest()[:12]
    cdir = build / f"corpus-{key}"
    if (cdir / "done").exists():
        return cdir
    cdir.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    log(f"building the record corpus in {cdir} (once) ...")
    base = _render_base(BASE)
    with open(cdir / "base.bin", "wb") as data, open(cdir / "base.idx", "wb") as idx:
        pos = 0
        for record, seq_off, ts_off in base:
            data.write(record)
            idx.write(IDX.pack(pos, len(record), seq_off, ts_off, 0))
            pos += len(record)
    per = REPLAY // MEMBERS
    with ThreadPoolExecutor(MEMBERS) as pool:
        members = list(pool.map(lambda m: _compress_member(base, m * per, per), range(MEMBERS)))
    c_base = 0
    u_base = 0
    ubytes = 0
    with open(cdir / "replay.gz", "wb") as gz, open(cdir / "replay.idx", "wb") as idx:
        for blob, batches in members:
            gz.write(blob)
            for c_off, c_len, u_len, n, crc, first in batches:
                idx.write(BATCH_IDX.pack(c_base + c_off, u_base, c_len, u_len, n, crc, first, 0))
                u_base += u_len
            c_base += len(blob)
        ubytes = u_base
    meta = {
        "base_records": BASE,
        "replay_records": REPLAY,
        "batch_records": BATCH,
        "level": LEVEL,
        "replay_uncompressed_bytes": ubytes,
        "replay_compressed_bytes": c_base,
        "avg_record_bytes": ubytes / REPLAY,
        "compression_ratio": ubytes / c_base,
    }
    (cdir / "meta.json").write_text(json.dumps(meta, indent=1))
    (cdir / "done").write_text("ok\n")
    log(
        f"  corpus ready in {time.monotonic() - t:.1f} s: {REPLAY} records, "
        f"{meta['avg_record_bytes']:.0f} B/record, gzip level {LEVEL} ratio {meta['compression_ratio']:.1f}"
    )
    return cdir


def load_meta(cdir: Path) -> dict:
    return json.loads((cdir / "meta.json").read_text())


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    print(ensure_corpus(Path(os.environ.get("BENCH_BUILD", here / "build"))))
