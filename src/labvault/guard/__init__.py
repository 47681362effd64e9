"""labvault.guard."""
