"""An MLLP listener served from a background thread for the duration of a test (its own
event loop; stopped, its connections ended and its committer closed on exit)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from labvault.interop.hl7.mllp import MllpServer


@contextmanager
def serving(srv: MllpServer) -> Iterator[MllpServer]:
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.start())
        started.set()
        loop.run_forever()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10), "the MLLP listener did not start"
    try:
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()
        srv.close()
