"""MLLP listener (asyncio): ``0x0B message 0x1C 0x0D`` frames, one ACK per message.

Per connection, messages are handled strictly in order: each is parsed, stored and
committed before its ACK is written back. With a batch handler (``handle_many``),
messages that arrive together on *different* connections share one transaction — one
savepoint each, so one message's failure leaves the others — stored on the loop itself
(``GroupCommitter``), and each ACK leaves only after that commit (group commit: the
commit is paid once per batch). Without one, each message is stored in a worker thread.

With an ``ssl`` context the listener speaks MLLP inside TLS (``tls.py``: the certificate,
and optionally the analysers' CA for mutual authentication).

Hostile input never stops the listener: bytes outside a frame are discarded, an
oversized frame is refused with an AR and the connection closed, idle connections time
out, connections beyond ``max_connections`` are closed at once, and any unexpected error
is logged and answered with an AE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from labvault.domain import inbound as I
from labvault.domain.inbound import Location, MessageError

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
OK, TRUNCATED, UNFRAMED = "ok", "truncated", "unframed"
DEFAULT_MAX_BYTES = 1 << 20          # 1 MiB per message
DEFAULT_IDLE_TIMEOUT = 300.0         # seconds without a byte -> close
DEFAULT_MAX_CONNECTIONS = 64         # a laboratory's analysers and middleware, with room
HANDSHAKE_TIMEOUT = 10.0             # seconds to complete a TLS handshake
HEAD_BYTES = 4096                    # of a refused frame, kept to answer its MSH-10
log = logging.getLogger("labvault.mllp")


class FrameTooLarge(Exception):
    """A frame over ``max_bytes``; ``head``: its first bytes, for the AR's MSA-2."""

    def __init__(self, head: bytes = b"") -> None:
        super().__init__("MLLP frame too large")
        self.head = head


class FrameReader:
    """Incremental MLLP de-framer (pure; fuzzed in tests)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.in_frame = False
        self.discarded = 0

    def feed(self, data: bytes) -> list[tuple[bytes, str]]:
        """Frames completed by ``data``: (payload, status). ``status`` is ``ok``;
        ``truncated`` for a frame cut short by a new start block, ``unframed`` for an HL7
        message sent without MLLP framing — neither is processed (an AR answers: a message
        cut at a segment boundary would otherwise look whole). Raises ``FrameTooLarge``."""
        out: list[tuple[bytes, str]] = []
        i = 0
        n = len(data)
        while i < n:
            if not self.in_frame:
                j = data.find(SB, i)
                if j == -1:
                    if data[i:i + 3] == b"MSH":
                        # HL7 sent without MLLP framing: answer (AR) rather than stay silent
                        out.append((bytes(data[i:i + 4096]), UNFRAMED))
                    self.discarded += n - i
                    break
                self.discarded += j - i
                self.in_frame = True
                self.buf.clear()
                i = j + 1
                continue
            j = data.find(EB, i)
            if j == -1:
                self.buf += data[i:]
                self._check_size()
                break
            self.buf += data[i:j]
            self._check_size()
            # a new start block inside a frame: the previous frame was truncated
            k = self.buf.rfind(SB)
            if k != -1:
                out.append((bytes(self.buf[:self.buf.find(SB)]), TRUNCATED))
                del self.buf[:k + 1]
            out.append((bytes(self.buf), OK))
            self.buf.clear()
            self.in_frame = False
            i = j + 1
            if i < n and data[i:i + 1] == CR:
                i += 1
        return out


    def _check_size(self) -> None:
        if len(self.buf) > self.max_bytes:
            head = bytes(self.buf[:HEAD_BYTES])
            self.buf.clear()
            self.in_frame = False
            raise FrameTooLarge(head)


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


Handler = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class Received:
    """A message and who sent it, when TLS authenticated the sender: the subject CN of
    the certificate the analysers' CA signed, and the peer address."""

    raw: bytes
    sender: str
    address: str | None = None


# A batch handler takes what ``prepare`` made of each payload (the payloads themselves
# when the server has no ``prepare``) and returns one ACK per item, in order.
BatchHandler = Callable[[list[Any]], list[bytes]]


class GroupCommitter:
    """Group commit on the listener's own event loop: messages from *different*
    connections (a connection sends its next message only after its ACK) are stored
    together by one ``handle_many`` call — parse, map, one transaction, one commit — and
    each caller gets its ACK only once that call returned, i.e. after the commit.

    When to store: at once when every *busy* connection (one that sent a message within
    ``busy_window`` seconds and is still open) has its message waiting — nobody else can
    join the batch — or when ``max_batch`` are waiting; otherwise at most ``max_wait``
    seconds after the first waiting message, so that an analyser gone quiet delays the
    others by that much and no more. One analyser alone is stored at once.

    The storing runs on the loop, not in a thread: while a batch is stored, the loop reads
    nothing, and the messages that arrive meanwhile wait in the sockets for the next
    batch. Measured against the storing thread of before (bench/mllp.py, alternated six
    times, docs/benchmarks.md "Session 11"): 8 connections made batches of 4 there, 7.9
    here; +9 % messages/s and −9 % server CPU per message with 8 connections (the thread
    and the loop traded the GIL at every SQLite call), +5 % with one (within the noise)."""

    def __init__(self, handle_many: BatchHandler, fallback: Callable[[bytes], bytes],
                 max_batch: int = 32, max_wait: float = 0.002,
                 busy_window: float = 1.0) -> None:
        self.handle_many = handle_many
        self.fallback = fallback
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait
        self.busy_window = busy_window
        self._waiting: list[tuple[bytes, Any, asyncio.Future[bytes]]] = []
        self._seen: dict[object, float] = {}      # connection -> when it last sent
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._due = False                         # a store is scheduled with call_soon
        self.batches = 0
        self.messages = 0
        self.largest = 0

    def submit(self, conn: object, payload: bytes, item: Any = None) -> asyncio.Future[bytes]:
        """Queue one message of connection ``conn`` (called on the loop): ``item`` is what
        the batch handler gets for it (the payload itself when None); ``payload`` is kept
        for the last-guard AE. The future is done once its batch is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._waiting.append((payload, payload if item is None else item, fut))
        now = loop.time()
        self._seen[conn] = now
        if self._due:
            return fut
        busy = sum(1 for t in self._seen.values() if now - t < self.busy_window)
        if len(self._waiting) >= min(busy, self.max_batch):
            if self._timer is not None:
                self._timer.cancel()
            self._due = True
            self._timer = loop.call_soon(self._store)
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._store)
        return fut

    def forget(self, conn: object) -> None:
        """A connection closed: no batch waits for it any more."""
        self._seen.pop(conn, None)

    def _store(self) -> None:
        self._timer, self._due = None, False
        batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
        if self._waiting:       # over max_batch: the rest right after this batch
            self._due = True
            self._timer = asyncio.get_running_loop().call_soon(self._store)
        if not batch:
            return
        self.batches += 1
        self.messages += len(batch)
        self.largest = max(self.largest, len(batch))
        try:
            acks = self.handle_many([item for _, item, _ in batch])
        except Exception:   # the batch handler answers errors itself; last guard
            log.exception("MLLP batch handler failed")
            acks = [self.fallback(p) for p, _, _ in batch]
        for (_, _, fut), ack in zip(batch, acks, strict=True):
            if not fut.done():      # its connection may have been cancelled meanwhile
                fut.set_result(ack)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class MllpServer:
    def __init__(self, handle: Handler, host: str = "127.0.0.1", port: int = 2575,
                 max_bytes: int = DEFAULT_MAX_BYTES, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 workers: int = 8, reject: Callable[[bytes, MessageError], bytes] | None = None,
                 handle_many: BatchHandler | None = None, max_batch: int = 32,
                 ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.handle = handle
        self.ssl = ssl_context
        self.committer = (GroupCommitter(handle_many, self._internal_error, max_batch)
                          if handle_many is not None else None)
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.reject = reject
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mllp")
        self.server: asyncio.AbstractServer | None = None
        self.messages = 0
        self.max_connections = max(1, max_connections)
        self.turned_away = 0        # connections closed at once: the limit was reached
        self.in_flight = 0          # messages read and not yet answered
        self._stopping = False      # shutdown: answer what was read, read nothing more
        self._tasks: set[asyncio.Task[None]] = set()

    def _safe_handle(self, payload: bytes) -> bytes:
        try:
            return self.handle(payload)
        except Exception:   # the handler already maps errors; this is the last guard
            log.exception("MLLP handler failed")
            return self._internal_error(payload)

    def _internal_error(self, payload: bytes) -> bytes:
        err = MessageError(None, I.ERR_INTERNAL, "internal error: message not stored")
        if self.reject is not None:
            with contextlib.suppress(Exception):
                return self.reject(payload, err)
        return b"MSH|^~\\&|||||||ACK|ERR|P|2.5\rMSA|AE|\r"

    async def _store(self, payload: bytes, sender: tuple[str, str | None] | None) -> bytes:
        if self.committer is not None:
            item = None if sender is None else Received(payload, *sender)
            return await self.committer.submit(asyncio.current_task(), payload, item)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._safe_handle,
                                                                 payload)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            # A flood of connections (or a misconfigured sender reconnecting in a loop)
            # must not exhaust the listener's descriptors: the analysers already
            # connected keep their place.
            self.turned_away += 1
            log.warning("MLLP connection from %s closed: %d connections open (limit %d)",
                        writer.get_extra_info("peername"), len(self._tasks),
                        self.max_connections)
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        fr = FrameReader(self.max_bytes)
        sender: tuple[str, str | None] | None = None
        if self.ssl is not None:
            from labvault.interop.tls import peer_name
            peer = writer.get_extra_info("peername")
            cn = peer_name(writer.get_extra_info("ssl_object"))
            log.info("MLLP TLS connection from %s (certificate: %s)", peer, cn or "none")
            if cn is not None:     # a certificate the analysers' CA signed: who writes
                sender = (cn, str(peer[0]) if isinstance(peer, tuple) and peer else None)
        try:
            while not self._stopping:
                try:
                    # asyncio.timeout, not wait_for: wait_for wraps every read in a new task
                    # (a task, a future and their callbacks per message: docs/benchmarks.md,
                    # "Session 13 (mllp listener)")
                    async with asyncio.timeout(self.idle_timeout):
                        data = await reader.read(65536)
                except TimeoutError:
                    break
                if not data or self._stopping:
                    # stopping: what arrived while it began is not answered; the analyser
                    # resends it (the stop may have waited behind a batch on the loop)
                    break
                try:
                    payloads = fr.feed(data)
                except FrameTooLarge as too_large:
                    ack = self._too_large(too_large.head)
                    self.messages += 1
                    writer.write(frame(ack))
                    await writer.drain()
                    break
                for payload, status in payloads:
                    self.in_flight += 1
                    try:
                        await self._answer(writer, payload, status, sender)
                    finally:
                        self.in_flight -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("MLLP connection error")
        finally:
            if self.committer is not None:
                self.committer.forget(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _too_large(self, head: bytes) -> bytes:
        """The AR for a frame over ``max_bytes``, answering its MSH-10 (MSA-2) read from the
        frame's first bytes; the text says why MSA-2 is empty when they hold no MSH."""
        why = "" if head.lstrip(b"\r\n ")[:3] == b"MSH" else (
            "; its first bytes are not an MSH segment, so MSA-2 cannot name it")
        err = MessageError(Location("MSH"), I.ERR_DATA_TYPE,
                           f"message larger than {self.max_bytes} bytes (the listener's "
                           f"--max-bytes): not processed, connection closed{why}")
        return self.reject(head, err) if self.reject else b"MSA|AR|\r"

    async def _answer(self, writer: asyncio.StreamWriter, payload: bytes, status: str,
                      sender: tuple[str, str | None] | None) -> None:
        if status == OK:
            ack = await self._store(payload, sender)
        else:
            err = MessageError(Location("MSH"), I.ERR_SEGMENT_SEQUENCE, (
                "message not framed with MLLP (0x0B ... 0x1C 0x0D)"
                if status == UNFRAMED else "truncated MLLP frame (a new start "
                "block came before the end block)") + ": not processed")
            ack = self.reject(payload, err) if self.reject else b"MSA|AR|\r"
        self.messages += 1
        writer.write(frame(ack))
        await writer.drain()

    async def start(self) -> asyncio.AbstractServer:
        # A TLS handshake takes milliseconds: a connection that has not finished it within
        # HANDSHAKE_TIMEOUT is dropped (asyncio's default, 60 s, would let a flood of silent
        # connections hold descriptors before max_connections ever counts them).
        self.server = await asyncio.start_server(
            self._client, self.host, self.port, limit=self.max_bytes + 1024, ssl=self.ssl,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.ssl is not None else None)
        sock = self.server.sockets[0] if self.server.sockets else None
        if sock is not None:
            self.port = sock.getsockname()[1]
        return self.server

    async def serve_forever(self) -> None:
        server = await self.start()
        async with server:
            await server.serve_forever()

    async def shutdown(self, grace: float = 10.0) -> int:
        """Stop gracefully (SIGTERM, Ctrl-C): accept no new connection, let the messages
        already read be stored and answered for up to ``grace`` seconds, then end the
        connections. Returns how many were still unanswered (their senders resend them:
        an MSH-10 already stored is answered with its first ACK)."""
        self._stopping = True       # a busy analyser does not keep the listener alive
        if self.server is not None:
            self.server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        left = self.in_flight
        await self.stop()
        return left

    async def stop(self) -> None:
        """Stop listening and end the open connections (inside the server's loop)."""
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.committer is not None:
            self.committer.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def send(host: str, port: int, payloads: list[bytes], timeout: float = 10.0,
         ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None
         ) -> list[bytes]:
    """A minimal blocking MLLP client (tests, benchmarks); inside TLS with ``ssl_context``
    (the listener's certificate checked against ``server_hostname``, default ``host``)."""
    import socket
    acks: list[bytes] = []
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        s = raw if ssl_context is None else ssl_context.wrap_socket(
            raw, server_hostname=server_hostname or host)
    except BaseException:
        raw.close()
        raise
    with s:
        fr = FrameReader(DEFAULT_MAX_BYTES)
        for p in payloads:
            s.sendall(frame(p))
            got: list[bytes] = []
            while not got:
                data = s.recv(65536)
                if not data:
                    return acks
                got = [p for p, _status in fr.feed(data)]
            acks.extend(got)
    return acks
