"""Keys, sealing and blind indexes. Raw primitives stay in ``_primitives``.

Only the core (``labvault.services`` and the modules it delegates to) imports this
package; doors never do (import-linter contract).
"""

from labvault.crypto.envelope import SealContext
from labvault.crypto.keys import ColumnSealer, DataKey, KeyRing, WrappedDek, WrappedTenantKey
from labvault.crypto.providers.base import KeyProvider

__all__ = ["ColumnSealer", "DataKey", "KeyProvider", "KeyRing", "SealContext", "WrappedDek",
           "WrappedTenantKey"]
