"""Root key in a PKCS#11 token (an HSM in production; SoftHSM2 in tests).

The root key is an AES-256 secret key object generated *inside* the token,
non-extractable and sensitive: labvault asks the token to wrap and unwrap tenant
keys with AES-GCM and never sees the root key itself. One PKCS#11 call per tenant
key (~14 µs), never per field.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from labvault.errors import KeyUnavailable, TokenKeyMissing

LABEL_PREFIX = "labvault-root-"
IV_BYTES = 12


# A PKCS#11 login is per application: a second C_Login fails (UserAlreadyLoggedIn),
# so every provider of this process shares one session per (module, token).
_SESSIONS: dict[tuple[str, str], Any] = {}
_LOCK = threading.RLock()


def _open_session(module: str, token_label: str, pin: str) -> Any:
    with _LOCK:
        if (module, token_label) in _SESSIONS:
            return _SESSIONS[(module, token_label)]
        try:
            lib = pkcs11.lib(module)
        except (RuntimeError, OSError) as exc:
            raise KeyUnavailable(f"cannot load PKCS#11 module {module}: {exc or type(exc).__name__}",
                                 "check LABVAULT_PKCS11_MODULE") from None
        try:
            token = lib.get_token(token_label=token_label)
            session = token.open(user_pin=pin, rw=True)
        except (pkcs11.exceptions.PKCS11Error, pkcs11.exceptions.NoSuchToken) as exc:
            raise KeyUnavailable(
                f"cannot open PKCS#11 token {token_label!r}: {type(exc).__name__}",
                "check LABVAULT_PKCS11_TOKEN and LABVAULT_PKCS11_PIN") from None
        _SESSIONS[(module, token_label)] = session
        return session


class Pkcs11KeyProvider:
    name = "pkcs11"

    def __init__(self, module: str, token_label: str, pin: str, create: bool = False) -> None:
        if not pin:
            raise KeyUnavailable("no PIN for the PKCS#11 token",
                                 "set LABVAULT_PKCS11_PIN to the token's user PIN")
        self._session: Any = _open_session(module, token_label, pin)
        self._lock = _LOCK
        found: list[Any] = list(self._session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}))
        self._keys: dict[str, Any] = {str(k.label): k for k in found
                                      if str(k.label).startswith(LABEL_PREFIX)}
        if not self._keys:
            if not create:
                raise TokenKeyMissing(token_label)
            self._generate(f"{LABEL_PREFIX}1")

    def _generate(self, label: str) -> None:
        key = self._session.generate_key(
            KeyType.AES, 256, label=label, store=True,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                      Attribute.ENCRYPT: True, Attribute.DECRYPT: True})
        self._keys[label] = key

    def current_root_id(self) -> str:
        return str(max(self._keys, key=lambda k: int(k[len(LABEL_PREFIX):])))

    def wrap(self, key: bytes, aad: bytes) -> tuple[str, bytes]:
        root_id = self.current_root_id()
        iv = os.urandom(IV_BYTES)
        with self._lock:
            ct = self._keys[root_id].encrypt(key, mechanism=Mechanism.AES_GCM,
                                             mechanism_param=pkcs11.GCMParams(iv, aad, 128))
        return root_id, iv + bytes(ct)

    def unwrap(self, root_id: str, wrapped: bytes, aad: bytes) -> bytes:
        root = self._keys.get(root_id)
        if root is None:
            raise KeyUnavailable(f"root key {root_id} is not in the PKCS#11 token",
                                 "use the token that created this installation")
        try:
            with self._lock:
                return bytes(root.decrypt(wrapped[IV_BYTES:], mechanism=Mechanism.AES_GCM,
                                          mechanism_param=pkcs11.GCMParams(wrapped[:IV_BYTES],
                                                                           aad, 128)))
        except pkcs11.exceptions.PKCS11Error:
            raise KeyUnavailable("a tenant key does not open with the token's root key",
                                 "use the token that created this installation") from None

    def rotate_root(self) -> str:
        n = int(self.current_root_id()[len(LABEL_PREFIX):]) + 1
        self._generate(f"{LABEL_PREFIX}{n}")
        return f"{LABEL_PREFIX}{n}"
