"""labvault.audit."""
