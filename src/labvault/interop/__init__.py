"""labvault.interop."""
