"""HL7 v2 bytes -> a checked, unescaped tree (split by python-hl7's rules).

``read_message(raw)`` never raises anything but ``Unparseable`` for hostile input:
the bytes are decoded with the charset MSH-18 declares (UTF-8 when absent — no silent
guessing, a wrong charset would corrupt names and results), the encoding characters
(MSH-2) are checked, the message is split as python-hl7 splits it, and every leaf
is unescaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\``, formatting escapes), which
``hl7.parse`` itself leaves as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

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


BOM = b"\xef\xbb\xbf"     # UTF-8 byte order mark (Windows middleware writes one)


def decode(raw: bytes) -> tuple[str, str]:
    raw = raw.removeprefix(BOM)
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


def _splitter(separators: str, codec: str) -> Callable[[str], list[list[Field]]]:
    """The message-level split of ``hl7.parse`` (python-hl7 0.4.5, ``hl7.parser._split``)
    into our regular tree (``Field``), leaves unescaped.

    Written here rather than called because python-hl7 builds a new parse-plan object
    for every container it visits and tests every separator at every level: ~500 µs of
    an 8-segment ORU^R01, a sixth of a message's whole cost in the MLLP listener, against
    ~60 µs for the same splits done directly (docs/benchmarks.md). The rules are
    python-hl7's, level by level: a part holding none of its level's separator or any
    deeper one is one value; MSH/BHS/FHS keep their encoding characters as fields 1-2;
    an empty field is no value at all, while an empty repetition or component is ''.
    tests/lab/test_parse_levels.py checks the tree equals ``hl7.parse``'s own on golden,
    mutated and generated messages. ``separators``: python-hl7's plan order (segment,
    field, repetition, component, subcomponent) then the escape character."""
    fs, rs, cs, ss, esc = separators[1], separators[2], separators[3], separators[4], \
        separators[5]
    enc = (fs, cs, rs, esc, ss)

    def unesc(v: str) -> str:
        return unescape(v, *enc, codec) if esc in v else v

    def value(f: str) -> Field:
        return [[[unesc(f)]]] if f else []

    def field(f: str) -> Field:
        if rs not in f and cs not in f and ss not in f:
            return value(f)
        reps: Field = []
        for r in f.split(rs):
            if cs not in r and ss not in r:
                reps.append([[unesc(r)]])
                continue
            reps.append([[unesc(x) for x in c.split(ss)] if ss in c else [unesc(c)]
                         for c in r.split(cs)])
        return reps

    def segment(text: str) -> list[Field]:
        if fs not in text and rs not in text and cs not in text and ss not in text:
            return [[[[text]]]]           # an id alone ("ZZZ"), kept as written
        head: list[Field] = []
        if text[:3] in ("MSH", "BHS", "FHS"):
            # python-hl7: the id, the field separator and the encoding characters are
            # fields 0-2, taken whole; the rest is split after the encoding characters
            end = text.find(text[3], 4)
            head = [value(text[:3]), value(text[3]), value(text[4:end])]
            text = text[end + 1:]
            if not text:
                return head
        return head + [field(f) for f in text.split(fs)]

    def split(text: str) -> list[list[Field]]:
        return [segment(t) for t in text.split("\r")]
    return split


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
    text = text.lstrip("\ufeff").strip("\r\n\x00 ")
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
        parsed: list[list[Field]] = _splitter("\r" + seps[0] + seps[2] + seps[1] + seps[4]
                                              + seps[3], codec)("\r".join(raw_segments).strip())
    except Exception as exc:  # a fault in the split must not take the door down
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
