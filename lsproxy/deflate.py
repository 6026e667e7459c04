"""The deflate/gzip codec lsproxy uses both ways: ISA-L when installed, else zlib.

python-isal (Intel ISA-L) has zlib's API shape and is ~3x faster to inflate
and ~4x faster to deflate than the standard library's zlib on this workload;
it is a default dependency, and everything falls back to zlib cleanly.

Also the pieces of the *compress once, share* gzip scheme (serve/encoding.py):
``deflate_block`` compresses one batch into raw deflate that ends with a full
flush, so such blocks are independent and can be concatenated in any order
after a gzip header; the gzip trailer's CRC-32 is then combined per block
with ``crc32_combine`` instead of being computed over every consumer's bytes.

Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from types import ModuleType
from typing import cast

DEFLATE_LEVEL = 1  # the fan-out path is CPU-bound; level 1 compresses ~5:1 on hits
GZIP_WBITS = 16 + zlib.MAX_WBITS
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, OS unknown
FINAL_BLOCK = b"\x03\x00"  # an empty fixed-Huffman block with BFINAL set
_backend: ModuleType = zlib
BACKEND = "zlib"
error: tuple[type[Exception], ...] = (zlib.error,)  # what a corrupt stream raises


def use_backend(name: str) -> None:
    """Choose the codec ("isal" or "zlib"); tests run both, operators never need to."""
    global _backend, BACKEND, error
    if name == "isal":
        from isal import isal_zlib

        _backend, error = isal_zlib, (zlib.error, cast(type[Exception], isal_zlib.error))
    elif name == "zlib":
        _backend, error = zlib, (zlib.error,)
    else:
        raise ValueError(f"unknown deflate backend {name!r}")
    BACKEND = name


with contextlib.suppress(ImportError):  # python-isal not installed: stay on zlib
    use_backend("isal")


def gunzip_stream() -> zlib._Decompress:
    """An incremental gzip decoder (one member)."""
    return _backend.decompressobj(GZIP_WBITS)  # type: ignore[no-any-return]


def deflate_block(data: bytes) -> bytes:
    """Raw deflate of ``data`` ending with a full flush: independent of anything before or after."""
    compressor = _backend.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)  # type: ignore[no-any-return]


def crc32(data: bytes, value: int = 0) -> int:
    return zlib.crc32(data, value)


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC-32 of A+B from the CRCs of A and B and the length of B."""
    if len_b == 0:
        return crc_a
    if BACKEND == "isal":
        return _backend.crc32_combine(crc_a, crc_b, len_b)  # type: ignore[no-any-return]
    return _crc32_combine_py(crc_a, crc_b, len_b)


def gzip_trailer(crc: int, size: int) -> bytes:
    return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


# zlib's crc32_combine (GF(2) matrix method), for when ISA-L is not installed.
def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def _crc32_combine_py(crc1: int, crc2: int, len2: int) -> int:
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2
