"""labvault.crypto."""
