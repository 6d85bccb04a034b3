"""The application: consent flow, telephony adapters, service, CLI and GDPR workflows."""

import hotpath

hotpath.install()  # before any module it compiles can be imported from source (hotpath.py)

__version__ = "0.1.0"
