"""Random ids: the shape, no repeats across threads, and a forked child never hands out
its parent's ids (the ids are drawn from per-thread pools of the kernel's CSPRNG)."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter

from labvault.store.ids import new_id, new_ids

SHAPE = re.compile(r"ae_[0-9abcdefghjkmnpqrstvwxyz]{26}")


def test_shape_and_no_repeat_across_threads() -> None:
    got: list[str] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [new_id("ae") for _ in range(3000)]
        with lock:
            got.extend(mine)
    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 12000
    assert all(SHAPE.fullmatch(i) for i in got)
    # every digit is used, roughly evenly (one random byte per digit, 8 bytes per digit)
    counts = Counter("".join(i[3:] for i in got))
    assert len(counts) == 32 and max(counts.values()) < 1.3 * min(counts.values())


def test_forked_child_draws_fresh_ids() -> None:
    new_id("ae")                      # the parent's pool is filled
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                      # pragma: no cover - runs in the child
        os.write(w, " ".join(new_id("ae") for _ in range(50)).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        child = set(f.read().split())
    parent = {new_id("ae") for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_a_group_shares_its_head_and_nothing_more() -> None:
    groups = [new_ids("obs", 5) for _ in range(2000)]
    shape = re.compile(r"obs_[0-9abcdefghjkmnpqrstvwxyz]{26}")
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)) == 10000
    assert all(shape.fullmatch(i) for i in flat)
    for g in groups:
        assert len({i[:20] for i in g}) == 1          # "obs_" + the 16 shared digits
    assert len({g[0][:20] for g in groups}) == 2000     # each group its own head
    # each id's own 10 digits are random: every digit used, roughly evenly
    tails = Counter("".join(i[20:] for i in flat))
    assert len(tails) == 32 and max(tails.values()) < 1.3 * min(tails.values())
    assert new_ids("obs", 0) == []
