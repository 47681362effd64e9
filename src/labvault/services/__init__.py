"""labvault.services."""
