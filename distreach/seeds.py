"""Stable seeds derived from names, so a row's seed never depends on which other rows exist."""

import hashlib


def derive_seed(*parts) -> int:
    """A 31-bit seed from the parts' text, identical across runs, machines and Python versions."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF
