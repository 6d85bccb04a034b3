"""The telephony platforms, each a thin translator between its wire and the call driver.

A platform turns its messages into consent-flow events for a call's ``CallSession``
(``ivr.calls``) and implements ``ivr.calls.Wire`` for the commands that come back: play a
prompt, stop it, hand off, hang up. ``twilio``: voice webhooks and Media Streams; ``asterisk``:
an ARI (Stasis) application with external-media RTP. docs/architecture.md says how to add one.
"""
