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
from typing import Any

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


class _Levels:
    """The containers python-hl7 builds, as our regular tree (``Field``), unescaped.

    ``hl7.parse`` takes a ``factory`` whose ``create_*`` callables make each level of the
    tree (its documented extension point). Its default containers nest irregularly — a
    level that holds no further separator is kept as a bare string — and were then walked
    a second time to regularise and unescape every leaf. These callables do that while
    python-hl7 splits, so the message is walked once and no container objects are built.
    python-hl7 still does all the splitting (``_split`` over its parse plan). What each
    level receives (python-hl7 0.4.5, ``hl7.parser._split``): a component, its
    subcomponent strings; a repetition, its components, or one string when it holds no
    component/subcomponent separator; a field, its repetitions, or one string when it
    holds no separator at all; a segment, its fields (one string: a segment that is
    only an id). The codec is fixed per class (``\\Xhh..\\`` escapes are in the
    message's charset); the separators come with every call."""

    codec = "utf-8"

    @classmethod
    def unesc(cls, v: str, esc: str, separators: str) -> str:
        if esc not in v:
            return v
        # python-hl7's plan separators: segment, field, repetition, component, subcomponent
        return unescape(v, separators[1], separators[3], separators[2], esc, separators[4],
                        cls.codec)

    @classmethod
    def create_component(cls, sequence: list[str], esc: str = "\\",
                         separators: str = "\r|~^&", factory: object = None) -> list[str]:
        return [cls.unesc(x, esc, separators) for x in sequence]

    @classmethod
    def create_repetition(cls, sequence: list[Any], esc: str = "\\",
                          separators: str = "\r|~^&", factory: object = None) -> list[Any]:
        if len(sequence) == 1 and isinstance(sequence[0], str):    # one plain component
            return [[cls.unesc(sequence[0], esc, separators)]]
        return sequence

    @classmethod
    def create_field(cls, sequence: list[Any], esc: str = "\\",
                     separators: str = "\r|~^&", factory: object = None) -> Field:
        if len(sequence) == 1 and isinstance(sequence[0], str):    # one plain value
            return [[[cls.unesc(sequence[0], esc, separators)]]] if sequence[0] else []
        return sequence

    @classmethod
    def create_segment(cls, sequence: list[Any], esc: str = "\\",
                       separators: str = "\r|~^&", factory: object = None) -> list[Field]:
        if len(sequence) == 1 and isinstance(sequence[0], str):    # an id alone ("ZZZ")
            return [[[[sequence[0]]]]]
        return sequence

    @classmethod
    def create_message(cls, sequence: list[Any], esc: str = "\\",
                       separators: str = "\r|~^&", factory: object = None) -> list[Any]:
        return sequence


_LEVELS: dict[str, type[_Levels]] = {}


def _levels(codec: str) -> type[_Levels]:
    """One factory class per codec (the codecs of ``CHARSETS``: a bounded set)."""
    cls = _LEVELS.get(codec)
    if cls is None:
        cls = _LEVELS[codec] = type(f"_Levels_{codec}", (_Levels,), {"codec": codec})
    return cls


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
        parsed: list[list[Field]] = hl7.parse("\r".join(raw_segments), factory=_levels(codec))
    except Exception as exc:  # python-hl7 raises assorted errors on hostile input
        raise Unparseable(f"not parseable as HL7 v2 ({type(exc).__name__})", "MSH") from None
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for fields in parsed:
        sid = fields[0][0][0][0]
        counts[sid] = counts.get(sid, 0) + 1
        if sid == "MSH":
            # MSH-1 is the field separator itself, MSH-2 the encoding characters (never
            # unescaped): taken as written.
            fields[1] = [[[seps[0]]]]
            fields[2] = [[[text[4:text.find(seps[0], 4)]]]]
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
