"""File drops: one file may hold one message, several, or FHS/BHS batches."""

from __future__ import annotations

import re

_SEG = re.compile(rb"\r\n|\n|\r")


def split_file(data: bytes) -> list[bytes]:
    """Messages of a file as raw bytes (each decoded later with its own MSH-18).
    Batch envelopes (FHS, BHS, BTS, FTS), MLLP framing bytes and a leading UTF-8 byte
    order mark are dropped."""
    data = data.removeprefix(b"\xef\xbb\xbf")      # a UTF-8 byte order mark (Windows)
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"")
    out: list[list[bytes]] = []
    for seg in _SEG.split(data):
        if not seg.strip():
            continue
        sid = seg[:3]
        if sid in (b"FHS", b"BHS", b"BTS", b"FTS"):
            continue
        if sid == b"MSH" or not out:
            out.append([seg])
        else:
            out[-1].append(seg)
    return [b"\r".join(m) + b"\r" for m in out]
