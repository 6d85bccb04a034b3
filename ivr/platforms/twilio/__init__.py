"""Twilio: voice webhooks (``app``), the Media Streams and TwiML wire format (``messages``),
webhook signatures (``signature``) and the per-call stream tokens (``stream_token``)."""
