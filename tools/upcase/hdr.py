"""upcase-load's latency histograms: HdrHistogram V2, compressed and base64 ("HISTF..."), in ns,
decoded to buckets and merged into one latency spectrum (the report's spectrum plot)."""
from __future__ import annotations

import base64
import math
import struct
import zlib


def decode_hdr(text: str) -> list[tuple[int, int]]:
    """(value, count) per non-empty bucket, value being the bucket's highest equivalent value
    (what HdrHistogram reports as a percentile)."""
    raw = base64.b64decode(text)
    cookie, length = struct.unpack(">iI", raw[:8])
    if cookie & ~0xF0 != 0x1C849304:
        raise ValueError(f"not a compressed V2 HdrHistogram (cookie {cookie:#x})")
    body = zlib.decompress(raw[8:8 + length])
    cookie, payload_len, _offset, digits, lowest, _highest, _ratio = struct.unpack(
        ">iiiiqqd", body[:40])
    if cookie & ~0xF0 != 0x1C849303:
        raise ValueError(f"not a V2 HdrHistogram encoding (cookie {cookie:#x})")
    payload = body[40:40 + payload_len]
    half = 1 << (math.ceil(math.log2(2 * 10 ** digits)) - 1)  # sub-buckets per half bucket
    half_mag = half.bit_length() - 1
    unit_mag = int(math.floor(math.log2(lowest)))
    out, index, pos = [], 0, 0
    while pos < len(payload):
        v, shift = 0, 0
        while True:  # LEB128 of at most 9 bytes, the 9th holding 8 bits
            b = payload[pos]
            pos += 1
            if shift == 56:
                v |= b << 56
                break
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        v = (v >> 1) ^ -(v & 1)  # ZigZag; negative = a run of empty buckets
        if v < 0:
            index += -v
            continue
        if v:
            bucket, sub = (index >> half_mag) - 1, (index & (half - 1)) + half
            if bucket < 0:
                bucket, sub = 0, sub - half
            out.append((((sub + 1) << (bucket + unit_mag)) - 1, v))
        index += 1
    return out


def merged_spectrum(recs: list[dict]) -> list[tuple[float, float]] | None:
    """(percentile, latency µs) from the corrected histograms of several runs merged."""
    counts: dict[int, int] = {}
    for rec in recs:
        try:
            h = rec["load"]["histograms"]["latency"]["hdr"]
            for value, n in decode_hdr(h):
                counts[value] = counts.get(value, 0) + n
        except (KeyError, ValueError, struct.error, zlib.error):
            return None
    total = sum(counts.values())
    if not total:
        return None
    out, seen = [], 0
    for value in sorted(counts):
        out.append((100.0 * seen / total, value / 1000))
        seen += counts[value]
        out.append((100.0 * seen / total, value / 1000))
    return out
