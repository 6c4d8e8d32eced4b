"""The ``kexec-metadata`` KHO subtree: which kernel kexec'd this one, and how often.

Models include/linux/kho/abi/kexec_metadata.h (torvalds/linux 40735a68):
``struct kho_kexec_metadata`` is ``__packed`` — u32 ``version`` @0, char
``previous_release[__NEW_UTS_LEN + 1]`` @4 (65 bytes), u32 ``kexec_count``
@69; 73 bytes.  It is a plain struct (not an FDT) registered with
``kho_add_subtree(KHO_METADATA_NODE_NAME, blob, sizeof(*blob))``; only
kho-v3+ roots carry the ``blob-size`` that lets a reader check its length.
"""

from __future__ import annotations

from dataclasses import dataclass

from dissect.cstruct import cstruct

from luosim.abi.errors import DecodeError, need

KHO_METADATA_NODE_NAME = "kexec-metadata"
KHO_KEXEC_METADATA_VERSION = 1
NEW_UTS_LEN = 64  # __NEW_UTS_LEN, include/uapi/linux/utsname.h (uABI)

_DEF = """
#define __NEW_UTS_LEN 64
struct kho_kexec_metadata {
    uint32  version;
    char    previous_release[__NEW_UTS_LEN + 1];
    uint32  kexec_count;
};
"""
_C = cstruct(endian="<").load(_DEF)  # cstruct structs are packed unless aligned
KhoKexecMetadataStruct = _C.kho_kexec_metadata
SIZE: int = len(KhoKexecMetadataStruct)  # 73
OFFSETS: dict[str, int] = {f.name: f.offset for f in KhoKexecMetadataStruct.__fields__
                           if f.offset is not None}


@dataclass(frozen=True)
class KexecMetadata:
    """``struct kho_kexec_metadata``."""

    version: int
    previous_release: str
    kexec_count: int

    def encode(self) -> bytes:
        """As ``kho_out_kexec_metadata()`` fills it (``strscpy`` of the release)."""
        rel = self.previous_release.encode("ascii")[:NEW_UTS_LEN]
        obj = KhoKexecMetadataStruct(version=self.version, previous_release=rel,
                                     kexec_count=self.kexec_count)
        out: bytes = obj.dumps()
        return out

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0) -> KexecMetadata:
        """Decode the 73-byte record (no version check: see :func:`read_incoming`)."""
        need("kho_kexec_metadata", buf, offset, SIZE, "version")
        obj = KhoKexecMetadataStruct(bytes(buf[offset:offset + SIZE]))
        raw = bytes(obj.previous_release)
        release = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        return cls(int(obj.version), release, int(obj.kexec_count))


def read_incoming(blob: bytes, blob_size: int) -> KexecMetadata:
    """``kho_in_kexec_metadata()``'s checks, in its order.

    Raises ``DecodeError`` for a blob shorter than the version word, an
    unknown version, or a blob shorter than the v1 struct (the kernel warns
    and ignores the metadata in each case).
    """
    what = "kexec-metadata"
    if blob_size < 4:
        raise DecodeError(what, 0, "version", f"blob too small ({blob_size} bytes)",
                          kind="truncated")
    version = int.from_bytes(bytes(blob[:4]), "little")
    if version != KHO_KEXEC_METADATA_VERSION:
        raise DecodeError(what, 0, "version", f"version {version} not supported (expected "
                          f"{KHO_KEXEC_METADATA_VERSION})", kind="bad-value")
    if blob_size < SIZE:
        raise DecodeError(what, 0, "kexec_count", f"blob too small for v{version} "
                          f"({blob_size} < {SIZE})", kind="truncated")
    return KexecMetadata.decode(blob)
