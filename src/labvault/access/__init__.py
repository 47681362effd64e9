"""labvault.access."""
