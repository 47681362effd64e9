"""Root key in a local file: the embedded default.

The file lives outside the data directory (``./var.key`` beside ``./var`` by default)
so that copying the data directory or a database backup does not copy the key.
It is created with mode 0600 and refused if group/other can read it.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from labvault import durable
from labvault.crypto import _primitives as P
from labvault.errors import KeyFileMissing, KeyUnavailable

FORMAT = "labvault-root-key/1"


class FileKeyProvider:
    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys, self._current = self._load(path)

    # -- creation -----------------------------------------------------------
    @classmethod
    def create(cls, path: Path) -> FileKeyProvider:
        if path.exists():
            raise KeyUnavailable(f"key file {path} already exists",
                                 "keep it (it protects existing data) or choose another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "current": "root-1",
               "keys": {"root-1": base64.b64encode(P.random_key()).decode()}}
        cls._write(path, doc, exclusive=True)
        return cls(path)

    @staticmethod
    def _write(path: Path, doc: Mapping[str, object], exclusive: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        tmp = path if exclusive else path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, flags, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            durable.sync_directory(path.parent)     # the new file's name, not only its bytes
        else:
            os.chmod(tmp, 0o600)
            durable.replace(tmp, path)

    @staticmethod
    def _load(path: Path) -> tuple[dict[str, bytes], str]:
        try:
            st = path.stat()
        except FileNotFoundError:
            # Labvault.open says whether data exists (restore the key, or run init)
            raise KeyFileMissing(path) from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyUnavailable(
                f"key file {path} is readable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o})",
                f"run `chmod 600 {path}`; labvault refuses to use an exposed root key")
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != FORMAT:
                raise ValueError("format")
            keys = {k: base64.b64decode(v, validate=True) for k, v in doc["keys"].items()}
            current = str(doc["current"])
            if current not in keys or any(len(k) != P.KEY_BYTES for k in keys.values()):
                raise ValueError("keys")
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyUnavailable(f"key file {path} is not a labvault root key file",
                                 "restore it from your key backup") from exc
        return keys, current

    # -- KeyProvider ----------------------------------------------------------
    def current_root_id(self) -> str:
        return self._current

    def wrap(self, key: bytes, aad: bytes) -> tuple[str, bytes]:
        return self._current, P.aead_seal(self._keys[self._current], key, aad)

    def unwrap(self, root_id: str, wrapped: bytes, aad: bytes) -> bytes:
        root = self._keys.get(root_id)
        if root is None:
            raise KeyUnavailable(f"root key {root_id} is not in {self.path}",
                                 "use the key file that created this data directory")
        try:
            return P.aead_open(root, wrapped, aad)
        except P.AuthenticationError:
            raise KeyUnavailable("a tenant key does not open with this root key",
                                 "use the key file that created this data directory") from None

    def rotate_root(self) -> str:
        n = max(int(k.split("-")[1]) for k in self._keys) + 1
        new_id = f"root-{n}"
        self._keys[new_id] = P.random_key()
        self._current = new_id
        self._write(self.path, {
            "format": FORMAT, "current": new_id,
            "keys": {k: base64.b64encode(v).decode() for k, v in self._keys.items()}},
            exclusive=False)
        return new_id
