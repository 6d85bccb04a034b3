"""Moved to ivr/cluster_demo/postgres.py (``ivr cluster demo`` starts PostgreSQL too); this name
stays for tests written against the old place."""

from ivr.cluster_demo.postgres import SUPERUSER, PostgresServer

__all__ = ["SUPERUSER", "PostgresServer"]
