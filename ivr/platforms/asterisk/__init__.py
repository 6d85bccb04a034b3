"""Asterisk: the ARI application (``app``) and the ARI wire format (``ari``). docs/asterisk.md
has the set-up sequence, the configuration and what is verified on a real Asterisk 22."""
