"""Hostile input: >= 100,000 generated messages through the parse/map/ACK path and the
MLLP de-framer without one crash; a real MLLP round trip over loopback.

How 100k stays under a minute: hypothesis draws 200 (seed message, RNG seed) cases;
each case then runs 500 cheap deterministic mutations of its message (byte flips,
separator/escape injection, truncation, segment duplication/removal, random bytes)
through the pure ``prepare`` function (no database), so hypothesis' per-example cost is
paid 200 times, not 100,000.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler, prepare
from labvault.interop.hl7.mllp import FrameReader, FrameTooLarge, MllpServer, frame, send
from labvault.interop.hl7.parse import read_message
from labvault.services.app import Labvault
from tests.lab import hl7_samples as S
from tests.lab.serving import serving
from tests.lab.test_hl7 import segs

SEEDS = [S.oru_numeric().encode(), S.oru_v23_local_codes().encode(), S.orm().encode(),
         S.oml().encode(), S.adt().encode()]
TOKENS = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\x0b", b"\x1c", b"\\X", b"\\.sp99\\",
          b"\\XZZ\\", b"MSH|", b"OBX|", b"\xff", b"\xc3", b"\x00", b"99999999999999", b"-",
          b"PID|1||", b"^^^^^^^^^^", b"~~~~", b"\\E\\", b"\\F\\"]
COUNT = {"inputs": 0}


def mutate(rng: random.Random, base: bytes) -> bytes:
    b = bytearray(base)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            del b[pos:]
        elif op == 3 and b:
            del b[pos:pos + rng.randint(1, 20)]
        elif op == 4:
            lines = bytes(b).split(b"\r")
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            b = bytearray(b"\r".join(lines))
        elif op == 5:
            lines = bytes(b).split(b"\r")
            if len(lines) > 1:
                del lines[rng.randrange(len(lines))]
            b = bytearray(b"\r".join(lines))
        else:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(b)


def check_ack(ack: bytes) -> None:
    msg = read_message(ack)                     # the ACK itself is valid HL7
    msa = msg.first("MSA")
    assert msa is not None and msa.get(1) in ("AA", "AE", "AR")


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.integers(0, len(SEEDS) - 1), st.integers(0, 2**32))
def fuzz_parse_map_ack(which: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        raw = mutate(rng, SEEDS[which])
        p = prepare(raw)
        if p.ack is not None:
            check_ack(p.ack)
        COUNT["inputs"] += 1


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2000), st.integers(0, 2**32))
def fuzz_raw_bytes_and_framing(data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    fr = FrameReader(max_bytes=4096)
    for _ in range(50):
        chunk = mutate(rng, data + frame(SEEDS[rng.randrange(len(SEEDS))]))
        p = prepare(chunk)
        assert p.ack is not None or p.inbound is not None
        try:
            for payload, _complete in fr.feed(chunk):
                assert len(payload) <= 4096
        except FrameTooLarge:
            fr = FrameReader(max_bytes=4096)
        COUNT["inputs"] += 1


@pytest.mark.slow
def test_fuzz_100k_inputs_zero_crashes() -> None:
    """Both hypothesis fuzzers, then the count: >= 100,000 inputs, every one answered."""
    COUNT["inputs"] = 0
    fuzz_parse_map_ack()
    fuzz_raw_bytes_and_framing()
    assert COUNT["inputs"] >= 100_000, COUNT


def test_frame_reader() -> None:
    fr = FrameReader(max_bytes=100)
    assert fr.feed(b"junk\x0bMSH|a\x1c\r\x0bMSH|b") == [(b"MSH|a", "ok")]
    assert fr.feed(b"\x1c\r") == [(b"MSH|b", "ok")]
    assert fr.discarded == 4
    # a start block inside a frame: the cut-short frame is reported truncated
    assert fr.feed(b"\x0bMSH|cut\x0bMSH|ok\x1c\r") == [(b"MSH|cut", "truncated"),
                                                        (b"MSH|ok", "ok")]
    assert fr.feed(b"MSH|^~\\&|no frame\r") == [(b"MSH|^~\\&|no frame\r", "unframed")]
    with pytest.raises(FrameTooLarge):
        fr.feed(b"\x0b" + b"x" * 200)


@pytest.fixture
def server(lab_lv: Labvault, tenant_id: str) -> Iterator[MllpServer]:
    h = Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)
    srv = MllpServer(lambda raw: h.handle(raw)[1], "127.0.0.1", 0, max_bytes=64 * 1024,
                     idle_timeout=5, workers=2, reject=h.reject)
    with serving(srv):
        yield srv


def test_mllp_round_trip(server: MllpServer, lab_lv: Labvault, tenant_id: str,
                         operator: Actor) -> None:
    d = {"birth_name": "MARTIN", "first_names": ["Jeanne"], "birth_date": "1980-05-17",
         "sex": "F", "nir": S.NIR_F}
    pid = lab_lv.patients.register(operator, tenant_id, d)
    acks = send("127.0.0.1", server.port, [S.oru_numeric("RT1").encode(),
                                           b"garbage", S.oru_numeric("RT1").encode()])
    assert [segs(a)["MSA"][0][1] for a in acks] == ["AA", "AR", "AA"]
    assert acks[0] == acks[2]                        # resend: the original ACK
    assert len(lab_lv.lab.list_observations(operator, tenant_id, patient_id=pid)) == 5


def test_mllp_oversized_and_truncated(server: MllpServer) -> None:
    import socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"\x0bMSH|^~\\&|A|B|C|D|1||ORU^R01|T1|P|2.5\rPID|1\x0b"
                  + frame(b"MSH|^~\\&|A|B|C|D|1||XYZ^Z|T2|P|2.5"))
        fr = FrameReader()
        got: list[bytes] = []
        while len(got) < 2:
            got += [p for p, _ in fr.feed(s.recv(65536))]
        assert [segs(a)["MSA"][0][1] for a in got] == ["AR", "AR"]
        assert b"truncated" in got[0]
        s.sendall(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|T3|P|2.5\rPID|1\r")   # no MLLP framing
        unframed: list[bytes] = []
        while not unframed:
            unframed = [p for p, _ in fr.feed(s.recv(65536))]
        assert b"MSA|AR|T3" in unframed[0] and b"not framed" in unframed[0]
        s.sendall(b"\x0b" + b"x" * (70 * 1024))
        data = b""
        while b"\x1c" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert b"MSA|AR" in data and b"larger than" in data


@pytest.mark.parametrize("backend", ["sqlite"])   # a listener thread needs its own connections
def test_connections_beyond_the_limit_are_closed(lab_lv: Labvault, tenant_id: str,
                                                 operator: Actor) -> None:
    """A flood of connections does not exhaust the listener: beyond ``max_connections``
    each is closed at once, the open ones keep working, and a place freed is taken."""
    import socket
    h = Hl7Handler(lab_lv, Actor.system("mllp"), tenant_id)
    lab_lv.patients.register(operator, tenant_id, {
        "birth_name": "MARTIN", "first_names": ["Jeanne"], "birth_date": "1980-05-17",
        "sex": "F", "nir": S.NIR_F})
    srv = MllpServer(lambda raw: h.handle(raw)[1], "127.0.0.1", 0, idle_timeout=10,
                     reject=h.reject, max_connections=2)
    with serving(srv):
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2)]
        try:
            deadline = time.monotonic() + 5
            while len(srv._tasks) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as extra:
                extra.sendall(frame(S.oru_numeric("X1").encode()))
                with contextlib.suppress(ConnectionResetError):   # (reset: bytes unread)
                    assert extra.recv(1024) == b""      # closed without a word
            assert srv.turned_away == 1
            held[0].sendall(frame(S.oru_numeric("L1").encode()))   # the open ones still work
            assert b"MSA|AA|L1" in held[0].recv(65536)
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 5
        while srv._tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        (ack,) = send("127.0.0.1", srv.port, [S.oru_numeric("L2").encode()])
        assert b"MSA|AA|L2" in ack


def test_a_graceful_stop_answers_the_message_in_hand() -> None:
    """``shutdown`` (SIGTERM in ``labvault mllp``): no new connection is accepted, a message
    already being stored is answered before its connection is ended, and the one the
    analyser sent after it is not read (it will resend it to the next listener)."""
    import asyncio
    import socket
    import threading

    entered = threading.Event()
    stored: list[object] = []

    def slow_batch(items: list[object]) -> list[bytes]:
        stored.extend(items)
        entered.set()
        time.sleep(0.5)                  # the commit of a large batch, say
        return [b"MSH|^~\\&|||||||ACK|1|P|2.5\rMSA|AA|SLOW\r" for _ in items]

    srv = MllpServer(lambda raw: b"", "127.0.0.1", 0, handle_many=slow_batch)
    with serving(srv):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(frame(S.oru_numeric("SLOW").encode()))
            assert entered.wait(10) and srv.in_flight == 1
            s.sendall(frame(S.oru_numeric("NEXT").encode()))     # queued behind it
            loop = next(t for t in srv._tasks).get_loop()
            left = asyncio.run_coroutine_threadsafe(srv.shutdown(grace=10), loop)
            fr = FrameReader()
            got: list[bytes] = []
            while not got:
                chunk = s.recv(65536)
                assert chunk, "closed before the answer"
                got = [p for p, _ in fr.feed(chunk)]
            assert b"MSA|AA|SLOW" in got[0]
            assert left.result(10) == 0
            assert len(got) == 1 and s.recv(65536) == b""     # closed, NEXT unanswered
            assert len(stored) == 1
        with pytest.raises(OSError):         # no new connection once stopping
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_an_idle_connection_is_closed_and_a_busy_one_is_not() -> None:
    """``idle_timeout`` counts from the last byte read: a connection silent that long is
    closed (whatever it half-sent is dropped), one that keeps sending within it stays open
    however long it lives, and the time a message spends being stored does not count."""
    import socket

    def slow_batch(items: list[object]) -> list[bytes]:
        time.sleep(0.5)                  # longer than the idle timeout: storing, not idle
        return [b"MSH|^~\\&|||||||ACK|1|P|2.5\rMSA|AA|OK\r" for _ in items]

    srv = MllpServer(lambda raw: b"", "127.0.0.1", 0, idle_timeout=0.3,
                     handle_many=slow_batch)
    with serving(srv):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as quiet, \
                socket.create_connection(("127.0.0.1", srv.port), timeout=5) as busy:
            quiet.sendall(b"\x0bMSH|")                   # half a frame, then silence
            for k in range(4):                           # ~1.2 s over four timeouts
                time.sleep(0.2)
                busy.sendall(frame(S.oru_numeric(f"B{k}").encode()))
                assert b"MSA|AA|OK" in busy.recv(65536)
            t0 = time.monotonic()
            assert quiet.recv(1024) == b""               # closed, without an answer
            assert time.monotonic() - t0 < 1.0          # long since (0.3 s after its bytes)
        assert srv.messages == 4
