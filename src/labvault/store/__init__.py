"""labvault.store."""
