"""labvault.domain."""
