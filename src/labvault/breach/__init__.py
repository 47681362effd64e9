"""labvault.breach."""
