"""Key providers hold the root key. The database never does (DESIGN §5)."""

from __future__ import annotations

from typing import Protocol


class KeyProvider(Protocol):
    """Wraps and unwraps tenant keys under the root key it holds.

    ``wrap`` returns the id of the root key version it used; ``unwrap`` takes it
    back so that a root rotation can leave older wrappings readable until re-wrapped.
    """

    name: str

    def current_root_id(self) -> str: ...

    def wrap(self, key: bytes, aad: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, root_id: str, wrapped: bytes, aad: bytes) -> bytes: ...

    def rotate_root(self) -> str:
        """Create a new root key version and make it current; returns its id."""
        ...
