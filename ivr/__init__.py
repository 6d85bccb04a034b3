"""The application: consent flow, telephony adapters, service, CLI and GDPR workflows."""

__version__ = "0.1.0"
