"""The recording vault: encrypted container, keys, catalog, blobs. Knows nothing of calls."""
