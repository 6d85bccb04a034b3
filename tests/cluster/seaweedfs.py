"""Moved to ivr/cluster_demo/seaweedfs.py (``ivr cluster demo`` starts SeaweedFS too); this name
stays for tests written against the old place."""

from ivr.cluster_demo.seaweedfs import SeaweedFS, free_ports, running, start, stop, weed_binary

__all__ = ["SeaweedFS", "free_ports", "running", "start", "stop", "weed_binary"]
