"""Typed decode errors: every decoder names the blob, offset and field."""

from __future__ import annotations


class DecodeError(ValueError):
    """A hand-over blob is truncated, corrupt or of another ABI.

    ``kind`` classifies it: ``truncated``, ``bad-magic``, ``bad-compatible``,
    ``bad-value``, ``bad-fdt``, ``bad-pointer``, ``cycle``.
    """

    def __init__(self, what: str, offset: int, field: str, reason: str,
                 kind: str = "bad-value") -> None:
        super().__init__(f"{what}: offset {offset:#x}, field {field}: {reason}")
        self.what = what
        self.offset = offset
        self.field = field
        self.reason = reason
        self.kind = kind


def need(what: str, buf: bytes, offset: int, size: int, field: str) -> None:
    """Raise ``truncated`` unless ``buf[offset:offset+size]`` exists."""
    if offset < 0 or offset + size > len(buf):
        raise DecodeError(what, offset, field,
                          f"needs {size} bytes, blob has {max(0, len(buf) - offset)}",
                          kind="truncated")


def cstr(what: str, raw: bytes, offset: int, field: str, *, strict: bool = True) -> str:
    """Decode a NUL-padded fixed-size char array.

    ``strict`` requires a terminating NUL inside the field (the kernel's
    ``strscpy``/``strncmp`` readers treat a full field as unterminated).
    """
    nul = raw.find(b"\0")
    if nul < 0:
        if strict:
            raise DecodeError(what, offset, field, "string not NUL-terminated")
        nul = len(raw)
    try:
        return raw[:nul].decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecodeError(what, offset + exc.start, field, "non-ASCII byte in string") from None


def pack_cstr(value: str, size: int, field: str) -> bytes:
    """Encode ``value`` NUL-padded into ``size`` bytes (must leave room for NUL)."""
    raw = value.encode("ascii")
    if len(raw) >= size:
        raise ValueError(f"{field}: {value!r} does not fit in char[{size}] with its NUL")
    return raw.ljust(size, b"\0")
