"""HL7 v2 bytes -> a checked, unescaped tree (python-hl7 does the splitting).

``read_message(raw)`` never raises anything but ``Unparseable`` for hostile input:
the bytes are decoded with the charset MSH-18 declares (UTF-8 when absent — no silent
guessing, a wrong charset would corrupt names and results), the encoding characters
(MSH-2) are checked, python-hl7 splits the message, and every leaf is unescaped
explicitly (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\``, formatting escapes), because
``hl7.parse`` keeps escape sequences as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import hl7

MAX_SEGMENTS = 5000
MAX_FIELDS = 300

# MSH-18 (HL7 table 0211) -> Python codec.
CHARSETS = {
    "": "utf-8", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8",
    "8859/1": "iso8859-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3",
    "8859/4": "iso8859-4", "8859/5": "iso8859-5", "8859/6": "iso8859-6",
    "8859/7": "iso8859-7", "8859/8": "iso8859-8", "8859/9": "iso8859-9",
    "8859/15": "iso8859-15", "UNICODE": "utf-8",
}


class Unparseable(Exception):
    """Not a readable HL7 v2 message (-> AR). ``where`` names the place when known."""

    def __init__(self, reason: str, where: str = "MSH", field: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where
        self.field = field


# A field: repetitions -> components -> subcomponents, all unescaped strings.
Field = list[list[list[str]]]


@dataclass(frozen=True, slots=True)
class Segment:
    id: str
    fields: tuple[Field, ...]      # fields[n] is field n (fields[0] is the segment id)
    sequence: int                  # 1 for the first segment of this id, 2 for the next ...

    def field(self, n: int) -> Field:
        return self.fields[n] if 0 < n < len(self.fields) else []

    def get(self, n: int, component: int = 1, rep: int = 0, sub: int = 1) -> str:
        """One value (1-based field/component/subcomponent, 0-based repetition), '' if absent."""
        f = self.field(n)
        if rep >= len(f):
            return ""
        comps = f[rep]
        if component - 1 >= len(comps):
            return ""
        subs = comps[component - 1]
        return subs[sub - 1] if sub - 1 < len(subs) else ""

    def reps(self, n: int) -> Field:
        return self.field(n)


@dataclass(frozen=True, slots=True)
class Message:
    segments: tuple[Segment, ...]
    encoding: str                  # the codec used
    separators: str                # field, component, repetition, escape, subcomponent

    def first(self, seg_id: str) -> Segment | None:
        for s in self.segments:
            if s.id == seg_id:
                return s
        return None

    @property
    def msh(self) -> Segment:
        return self.segments[0]


def charset_of(raw: bytes) -> str:
    """The codec MSH-18 asks for (read on the raw bytes, before decoding)."""
    first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(first) < 8 or first[:3] not in (b"MSH", b"FHS", b"BHS"):
        raise Unparseable("the message does not start with an MSH segment", "MSH")
    sep = first[3:4]
    parts = first.split(sep)
    declared = parts[17].split(first[4:5] if len(first) > 4 else b"^")[0] if len(parts) > 17 \
        else b""
    try:
        name = declared.decode("ascii").strip().upper()
    except UnicodeDecodeError:
        raise Unparseable("MSH-18 (character set) is not ASCII", "MSH", 18) from None
    codec = CHARSETS.get(name)
    if codec is None:
        raise Unparseable(f"MSH-18 character set {name!r} is not supported", "MSH", 18)
    return codec


def decode(raw: bytes) -> tuple[str, str]:
    codec = charset_of(raw)
    try:
        return raw.decode(codec), codec
    except UnicodeDecodeError:
        raise Unparseable(f"the message is not valid {codec} (declare the character set "
                          "in MSH-18, e.g. 8859/1)", "MSH", 18) from None


def check_encoding_chars(text: str) -> str:
    """MSH-1 and MSH-2: five distinct separators, none alphanumeric or blank."""
    if len(text) < 8 or not text.startswith("MSH"):
        raise Unparseable("the message does not start with an MSH segment", "MSH")
    fs = text[3]
    end = text.find(fs, 4)
    enc = text[4:end] if end != -1 else ""
    seps = fs + enc[:4]
    if len(enc) not in (4, 5) or len(set(seps)) != 5 or any(
            c.isalnum() or not "\x21" <= c <= "\x7e" for c in seps):
        raise Unparseable("MSH-1/MSH-2 encoding characters are invalid (expected e.g. |^~\\&)",
                          "MSH", 2)
    return seps


_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_SEG_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_NEWLINES = re.compile(r"\r\n|\n")


def unescape(value: str, fs: str, cs: str, rs: str, esc: str, ss: str, codec: str) -> str:
    """Replace HL7 escape sequences (v2.5 §2.7); unknown sequences are dropped."""
    if esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != esc:
            out.append(c)
            i += 1
            continue
        j = value.find(esc, i + 1)
        if j == -1:                       # dangling escape character: keep it literally
            out.append(value[i:])
            break
        seq = value[i + 1:j]
        i = j + 1
        if seq == "F":
            out.append(fs)
        elif seq == "S":
            out.append(cs)
        elif seq == "T":
            out.append(ss)
        elif seq == "R":
            out.append(rs)
        elif seq == "E":
            out.append(esc)
        elif seq[:1] == "X" and _HEX.fullmatch(seq[1:]):
            try:
                out.append(bytes.fromhex(seq[1:]).decode(codec))
            except (UnicodeDecodeError, ValueError):
                out.append("\ufffd")
        elif seq in (".br", ".sp"):
            out.append("\n")
        elif seq.startswith(".sp") and seq[3:].isdigit() and len(seq) < 7:
            out.append("\n" * min(int(seq[3:]), 10))
        # \H\ \N\ (highlighting), \.fi\ etc. and unknown sequences: dropped
    return "".join(out)


def _norm_field(f: object, unesc: _Unesc) -> Field:
    """python-hl7 nests irregularly (a plain value is a bare string); make it regular."""
    if isinstance(f, str):
        return [[[unesc(f)]]] if f else []
    reps: Field = []
    items = list(f)  # type: ignore[call-overload]
    if items and all(isinstance(x, str) for x in items):
        # Field with a single plain value
        return [[[unesc(x) for x in items]]] if any(items) else []
    for rep in items:
        if isinstance(rep, str):
            reps.append([[unesc(rep)]])
            continue
        comps: list[list[str]] = []
        for comp in rep:
            if isinstance(comp, str):
                comps.append([unesc(comp)])
            else:
                comps.append([unesc(str(s)) for s in comp])
        reps.append(comps)
    return reps


class _Unesc:
    __slots__ = ("codec", "cs", "esc", "fs", "rs", "ss")

    def __init__(self, seps: str, codec: str) -> None:
        self.fs, self.cs, self.rs, self.esc, self.ss = seps[0], seps[1], seps[2], seps[3], seps[4]
        self.codec = codec

    def __call__(self, v: str) -> str:
        if self.esc not in v:
            return v
        return unescape(v, self.fs, self.cs, self.rs, self.esc, self.ss, self.codec)


def split_messages(text: str) -> list[str]:
    """A batch/file (FHS/BHS ... BTS/FTS) or a plain stream -> one string per MSH."""
    lines = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
    out: list[list[str]] = []
    for seg in lines:
        sid = seg[:3]
        if sid in ("FHS", "BHS", "BTS", "FTS"):
            continue
        if sid == "MSH" or not out:
            out.append([seg])
        else:
            out[-1].append(seg)
    return ["\r".join(m) for m in out]


def parse_text(text: str, codec: str = "utf-8") -> Message:
    text = text.strip("\r\n\x00 ")
    if "\n" in text:
        text = _NEWLINES.sub("\r", text)
    seps = check_encoding_chars(text)
    if "\x0b" in text or "\x1c" in text:
        raise Unparseable("MLLP framing characters inside the message", "MSH")
    raw_segments = [s for s in text.split("\r") if s]
    if len(raw_segments) > MAX_SEGMENTS:
        raise Unparseable(f"more than {MAX_SEGMENTS} segments", "MSH")
    for s in raw_segments:
        if len(s) < 3 or not _SEG_ID.fullmatch(s[:3]) or (
                len(s) > 3 and s[3] != seps[0]):
            raise Unparseable(f"segment {s[:3]!r} is not a valid segment id", s[:3] or "?")
        if s.count(seps[0]) > MAX_FIELDS:
            raise Unparseable(f"segment {s[:3]} has more than {MAX_FIELDS} fields", s[:3])
    if any(s[:3] == "MSH" for s in raw_segments[1:]):
        raise Unparseable("more than one MSH segment in one message", "MSH")
    try:
        parsed = hl7.parse("\r".join(raw_segments))
    except Exception as exc:  # python-hl7 raises assorted errors on hostile input
        raise Unparseable(f"not parseable as HL7 v2 ({type(exc).__name__})", "MSH") from None
    unesc = _Unesc(seps, codec)
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for seg in parsed:
        sid = str(seg[0][0]) if not isinstance(seg[0], str) else seg[0]
        counts[sid] = counts.get(sid, 0) + 1
        fields: list[Field] = [[[[sid]]]]
        start = 1
        if sid == "MSH":
            # MSH-1 is the field separator itself, MSH-2 the encoding characters (never
            # unescaped); python-hl7 gives them as seg[1] and seg[2].
            fields.append([[[seps[0]]]])
            fields.append([[[str(seg[2][0]) if not isinstance(seg[2], str) else seg[2]]]])
            start = 3
        for f in list(seg)[start:]:
            fields.append(_norm_field(f, unesc))
        segments.append(Segment(sid, tuple(fields), counts[sid]))
    return Message(tuple(segments), codec, seps)


def read_message(raw: bytes | str) -> Message:
    """Decode (MSH-18) and parse one message. Raises only ``Unparseable``."""
    try:
        if isinstance(raw, bytes):
            text, codec = decode(raw)
        else:
            text, codec = raw, "utf-8"
        return parse_text(text, codec)
    except Unparseable:
        raise
    except Exception as exc:  # last line of defence: hostile input never crashes a door
        raise Unparseable(f"not parseable as HL7 v2 ({type(exc).__name__})", "MSH") from None
