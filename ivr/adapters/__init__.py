"""Thin translators between platforms' wire messages and the consent flow's events/commands."""
