from collections.abc import Sequence
from typing import Any

def mac_many(key: bytes, messages: Sequence[bytes], size: int, /) -> bytes: ...

def chain_append(row_type: type[tuple[Any, ...]], chain: str, seq: int, prev: bytes, key: bytes,
                 frontier: list[bytes],
                 entries: Sequence[tuple[str, int, str, str | None, str, str, str]],
                 checkpoint_every: int, /
                 ) -> tuple[list[Any], int, bytes, bytes, list[bytes],
                            list[tuple[int, bytes, bytes, list[bytes]]]]: ...
