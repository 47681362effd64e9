"""labvault.api."""
