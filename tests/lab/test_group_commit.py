"""MLLP group commit: several connections' messages in one transaction, one savepoint each.
A refused message leaves nothing and does not touch the others; a failed commit answers
every message of the batch with AE and stores none of them."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import func, select

from labvault.domain.actors import Actor
from labvault.interop.hl7.handler import Hl7Handler
from labvault.interop.hl7.mllp import MllpServer, send
from labvault.services.app import Labvault
from labvault.services.audit import audit_of, install_audit
from labvault.store.schema import tenants
from tests.lab import hl7_samples as S
from tests.lab.serving import serving
from tests.lab.test_hl7 import counts, known, segs  # noqa: F401 - shared fixtures


def code(ack: bytes) -> str:
    return segs(ack)["MSA"][0][1]


def test_a_batch_keeps_each_message_apart(lab_lv: Labvault, h: Hl7Handler, known: str,  # noqa: F811
                                          tenant_id: str, operator: Actor) -> None:
    install_audit(lab_lv)
    before = counts(lab_lv, tenant_id, operator)
    batch = [S.oru_numeric("G1").encode(),
             b"garbage",
             S.oru_numeric("G2").replace("20260301081500", "20261341").encode(),   # bad date
             S.orm("G3").encode(),
             S.oru_numeric("G1").encode()]                                  # resend of G1
    acks = h.handle_many(batch)
    assert [code(a) for a in acks] == ["AA", "AR", "AE", "AA", "AA"]
    assert acks[4] == acks[0]                          # the resend gets the original ACK
    orders, obs, messages = counts(lab_lv, tenant_id, operator)
    assert (orders - before[0], obs - before[1], messages - before[2]) == (2, 5, 2)
    assert audit_of(lab_lv).verify()["ok"]


def test_a_failed_commit_stores_nothing_and_answers_ae(
        lab_lv: Labvault, h: Hl7Handler, known: str, tenant_id: str,  # noqa: F811
        operator: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    before = counts(lab_lv, tenant_id, operator)
    real = h._in_savepoint
    calls = []

    def failing(p):  # type: ignore[no-untyped-def]
        calls.append(p)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(p)

    monkeypatch.setattr(h, "_in_savepoint", failing)
    acks = h.handle_many([S.oru_numeric("F1").encode(), S.orm("F2").encode()])
    assert [code(a) for a in acks] == ["AE", "AE"]
    assert all(b"send it again" in a for a in acks)
    assert counts(lab_lv, tenant_id, operator) == before
    monkeypatch.setattr(h, "_in_savepoint", real)
    assert [code(a) for a in h.handle_many([S.oru_numeric("F1").encode(),
                                            S.orm("F2").encode()])] == ["AA", "AA"]


def test_a_savepoint_is_inside_the_transaction(lab_lv: Labvault) -> None:
    """Python's sqlite3 opens a transaction only before the first write: a savepoint taken
    earlier would commit on release. ``lv.savepoint`` opens the transaction first."""
    with lab_lv.begin() as conn:
        n = conn.execute(select(func.count()).select_from(tenants)).scalar_one()
    with pytest.raises(RuntimeError), lab_lv.begin() as conn:
        with lab_lv.savepoint():
            conn.execute(tenants.insert().values(
                tenant_id="lab_savepointtest0000000000000", name="Savepoint",
                finess="010000024", created_at=__import__("datetime").datetime.now()))
        raise RuntimeError("the batch fails after the savepoint was released")
    with lab_lv.begin() as conn:
        assert conn.execute(select(func.count()).select_from(tenants)).scalar_one() == n
    with pytest.raises(RuntimeError, match="open transaction"), lab_lv.savepoint():
        pass


def test_nested_savepoints_undo_only_their_own_writes(lab_lv: Labvault) -> None:
    """``lv.savepoint`` is plain SAVEPOINT / ROLLBACK TO / RELEASE statements: an inner
    one that raises undoes its writes alone, and its exception is the one raised."""
    from datetime import datetime

    def add(conn, n: int) -> None:  # type: ignore[no-untyped-def]
        conn.execute(tenants.insert().values(
            tenant_id=f"lab_nestedsavepoint{n:011d}", name=f"Nested {n}",
            finess=f"0199999{n:02d}", created_at=datetime.now()))
    with lab_lv.begin() as conn:
        before = conn.execute(select(func.count()).select_from(tenants)).scalar_one()
        with lab_lv.savepoint():
            add(conn, 1)
            with pytest.raises(LookupError, match="inner"), lab_lv.savepoint():
                add(conn, 2)
                raise LookupError("inner")
            add(conn, 3)
        with pytest.raises(ValueError, match="second"), lab_lv.savepoint():
            add(conn, 4)
            raise ValueError("second")
        names = set(conn.execute(select(tenants.c.name)).scalars())
        assert conn.execute(select(func.count()).select_from(tenants)).scalar_one() == before + 2
        assert {"Nested 1", "Nested 3"} <= names and not {"Nested 2", "Nested 4"} & names


@pytest.mark.parametrize("backend", ["sqlite"])   # a listener thread needs its own connections
def test_concurrent_connections_share_commits(lab_lv: Labvault, h: Hl7Handler,
                                              tenant_id: str, known: str,  # noqa: F811
                                              operator: Actor) -> None:
    srv = MllpServer(lambda raw: h.handle(raw)[1], "127.0.0.1", 0, reject=h.reject,
                     handle_many=h.handle_many)
    with serving(srv):
        results: dict[int, list[bytes]] = {}

        def client(k: int) -> None:
            results[k] = send("127.0.0.1", srv.port,
                              [S.oru_numeric(f"C{k}-{i}").encode() for i in range(6)])
        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert sorted(results) == list(range(6))
        assert all(code(a) == "AA" for acks in results.values() for a in acks)
        assert srv.committer is not None and srv.committer.batches <= 36
        assert counts(lab_lv, tenant_id, operator)[2] == 36


def test_busy_connections_share_one_batch_and_no_ack_leaves_before_it() -> None:
    """Three connections that sent recently: the batch waits until all three have a
    message waiting (however long max_wait), stores them in one call, and no ACK is
    released before that call returned."""
    from labvault.interop.hl7.mllp import GroupCommitter
    batches: list[list[str]] = []

    def handle_many(items: list[str]) -> list[bytes]:
        batches.append(list(items))
        return [f"ACK {i}".encode() for i in items]

    async def main() -> None:
        gc = GroupCommitter(handle_many, lambda p: b"AE", max_wait=60)
        a, b, c = object(), object(), object()
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.gather(*(gc.submit(conn, b"x", "first") for conn in (a, b, c))) \
            == [b"ACK first"] * 3
        assert asyncio.get_running_loop().time() - t0 < 30     # not max_wait: all three came
        fa = gc.submit(a, b"m1", "m1")
        fb = gc.submit(b, b"m2", "m2")
        await asyncio.sleep(0.05)
        assert not fa.done() and not fb.done()      # c is busy too: wait for it
        fc = gc.submit(c, b"m3", "m3")
        assert await asyncio.gather(fa, fb, fc) == [b"ACK m1", b"ACK m2", b"ACK m3"]
        assert batches[-1] == ["m1", "m2", "m3"]
        assert (gc.batches, gc.messages, gc.largest) == (2, 6, 3)
        gc.close()
    asyncio.run(main())


def test_a_quiet_connection_delays_the_others_by_max_wait_only() -> None:
    """A connection that sent recently and then went quiet (or closed) holds a waiting
    message for ``max_wait`` at most; one that closed, or has been quiet longer than the
    busy window, not at all."""
    from labvault.interop.hl7.mllp import GroupCommitter

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gc = GroupCommitter(lambda items: [b"AA" for _ in items], lambda p: b"AE",
                            max_wait=0.2, busy_window=0.5)
        quiet, sender = object(), object()
        await gc.submit(quiet, b"q")
        t0 = loop.time()
        await gc.submit(sender, b"s")               # quiet is still busy: max_wait
        assert 0.15 < loop.time() - t0 < 2
        gc.forget(quiet)                            # its connection closed
        t0 = loop.time()
        await gc.submit(sender, b"s")
        assert loop.time() - t0 < 0.15
        await gc.submit(quiet, b"q")
        await asyncio.sleep(0.6)                    # quiet longer than the busy window
        t0 = loop.time()
        await gc.submit(sender, b"s")
        assert loop.time() - t0 < 0.15
        gc.close()
    asyncio.run(main())


def test_the_batch_is_bounded_and_a_failing_batch_answers_each() -> None:
    from labvault.interop.hl7.mllp import GroupCommitter
    sizes: list[int] = []

    def handle_many(items: list[bytes]) -> list[bytes]:
        sizes.append(len(items))
        if len(sizes) == 1:
            return [b"AA" for _ in items]
        raise RuntimeError("a bug in the batch handler")

    async def main() -> None:
        gc = GroupCommitter(handle_many, lambda p: b"AE " + p, max_batch=3, max_wait=60)
        conns = [object() for _ in range(5)]
        for conn in conns:                          # five busy connections
            gc._seen[conn] = asyncio.get_running_loop().time()
        futs = [gc.submit(conn, f"p{i}".encode()) for i, conn in enumerate(conns)]
        assert await asyncio.gather(*futs) == [b"AA", b"AA", b"AA", b"AE p3", b"AE p4"]
        assert sizes == [3, 2]
        gc.close()
    asyncio.run(main())
