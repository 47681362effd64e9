"""Accounts, passwords, MFA, sessions, throttling and the access policy (the gate's rules)."""
