"""Types of the optional C extension built from _hmac.c."""

class Keyer:
    """One secret's HMAC-SHA256 in C, from libcrypto's functions and precomputed states."""

    def __init__(self, update: int, final: int, inner: bytes, outer: bytes) -> None: ...
    def key(self, data: bytes, /) -> bytes:
        """The 32-byte HMAC-SHA256 of one UTF-8 device id."""
