"""The vault's exceptions, shared by its modules; messages are meant for an operator."""


class VaultError(Exception):
    """An operation on the vault failed."""


class NotReadable(VaultError):
    """A recording exists but has nothing to read (discarded, erased, failed, in progress)."""


class VaultWriteError(VaultError, OSError):
    """Writing a blob failed (full disk, I/O error). Chunks already on disk are intact."""
