"""labvault.crypto.providers."""
