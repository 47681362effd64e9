"""labvault.web."""
