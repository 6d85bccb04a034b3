"""The recording vault: encrypted container, keys, catalog, blobs. Knows nothing of calls."""

import hotpath

hotpath.install()  # before any module it compiles can be imported from source (hotpath.py)
