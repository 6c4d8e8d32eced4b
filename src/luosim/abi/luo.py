"""Live Update Orchestrator ABI: both generations plus the /dev/liveupdate ioctl structs.

Models include/linux/kho/abi/luo.h (spec luo.md §5) and
include/uapi/linux/liveupdate.h (spec luo.md §2.1-2.2):

* P0/P1 ``luo-v1``: a one-page FDT registered with KHO as ``"LUO"`` that holds
  the liveupdate number and raw u64 physical addresses of the session block
  (16 pages: ``luo_session_header_ser`` + array) and, P1 only, the FLB block
  (1 page: ``luo_flb_header_ser`` + array).  Per-session file arrays are 2
  pages with no header.
* P3/P4 ``luo-v5``: a raw packed ``struct luo_ser`` registered as the KHO blob
  ``"LUO"``; sessions and files live in KHO block chains (see
  :mod:`luosim.abi.block`), FLBs still in one page.

All multi-byte values are CPU native = little endian, also inside FDT
properties.  Strings written by the kernel are NUL-padded and must carry their
NUL when read back (a missing NUL is reported as corruption).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from luosim.abi import fdt as fdtlib
from luosim.abi.block import KHO_BLOCK_MAX as KHO_BLOCK_MAX
from luosim.abi.block import KHO_BLOCK_SIZE, block_capacity
from luosim.abi.block import KhoBlockHeaderSer as KhoBlockHeaderSer
from luosim.abi.cdecl import CStruct, check_uint, codec, declare
from luosim.abi.errors import DecodeError

LUO_H = "torvalds/linux@cc4adab1 include/linux/kho/abi/luo.h"
LUO_FLB_H = ("include/linux/kho/abi/luo.h of the LUO FLB series (luo-flb-v1; not in "
             "torvalds/linux@cc4adab1)")
LUO_V5_H = "include/linux/kho/abi/luo.h of the LUO linked-block series (luo-v5, spec luo.md §5.2)"
UAPI_H = "torvalds/linux@16cec0d2 include/uapi/linux/liveupdate.h"

PAGE_SIZE = 4096

# ----------------------------------------------------------------- compatibles, names
LUO_KHO_ENTRY_NAME = "LUO"
LUO_FDT_COMPATIBLE = "luo-v1"
LUO_SESSION_COMPATIBLE = "luo-session-v2"
LUO_FLB_COMPATIBLE = "luo-flb-v1"
LUO_V5_COMPATIBLE = "luo-v5"

LUO_FDT_SIZE = PAGE_SIZE
LUO_FDT_LIVEUPDATE_NUM = "liveupdate-number"
LUO_FDT_SESSION_NODE_NAME = "luo-session"
LUO_FDT_SESSION_HEADER = "luo-session-header"
LUO_FDT_FLB_NODE_NAME = "luo-flb"
LUO_FDT_FLB_HEADER = "luo-flb-header"

# ----------------------------------------------------------------- sizes and limits
LUO_SESSION_NAME_LENGTH = 64
LIVEUPDATE_SESSION_NAME_LENGTH = LUO_SESSION_NAME_LENGTH
LIVEUPDATE_HNDL_COMPAT_LENGTH = 48
LUO_V5_COMPAT_LENGTH = 8  # sizeof("luo-v5") rounded up to 8

LUO_SESSION_PGCNT = 16
LUO_SESSION_BLOCK_SIZE = LUO_SESSION_PGCNT * PAGE_SIZE
LUO_FILE_PGCNT = 2
LUO_FILE_ARRAY_SIZE = LUO_FILE_PGCNT * PAGE_SIZE
LUO_FLB_PGCNT = 1
LUO_FLB_BLOCK_SIZE = LUO_FLB_PGCNT * PAGE_SIZE

#: (65536 - 8) // 80 (a kernel source comment still says 744).
LUO_SESSION_MAX = 819
#: 8192 // 64 (P0/P1 per-session file array).
LUO_FILE_MAX = 128
#: (4096 - 16) // 64.
LUO_FLB_MAX = 63
#: Entries per 4 KiB KHO block (P3/P4).
LUO_SESSIONS_PER_BLOCK = 51
LUO_FILES_PER_BLOCK = 63


def _u(field: str, value: int, bits: int = 64) -> int:
    check_uint(field, value, bits)
    return value


# ----------------------------------------------------------------- serialized structs

declare("""
struct luo_session_header_ser {
    u64 count;
} __packed;
struct luo_file_set_ser {
    u64 files;
    u64 count;
} __packed;
struct luo_session_ser {
    char name[64];                      /* LIVEUPDATE_SESSION_NAME_LENGTH */
    struct luo_file_set_ser file_set_ser;
} __packed;
struct luo_file_ser {
    char compatible[48];                /* LIVEUPDATE_HNDL_COMPAT_LENGTH */
    u64 data;
    u64 token;
} __packed;
struct luo_flb_header_ser {
    u64 pgcnt;
    u64 count;
} __packed;
struct luo_flb_ser {
    char name[48];
    u64 data;
    u64 count;
} __packed;
struct luo_ser {
    char compatible[8];
    u64 liveupdate_num;
    u64 sessions_pa;
    u64 flbs_pa;
} __packed;
""")


@codec("luo_session_header_ser", LUO_H, what="luo session header")
@dataclass(frozen=True)
class LuoSessionHeaderSer(CStruct):
    """P0/P1 session block header: ``count``; the session array follows immediately."""

    count: int


@codec("luo_file_set_ser", LUO_H, what="luo file set")
@dataclass(frozen=True)
class LuoFileSetSer(CStruct):
    """File array / first file block phys (0 if none) and number of files."""

    files: int
    count: int


@codec("luo_session_ser", LUO_H, what="luo session")
@dataclass(frozen=True)
class LuoSessionSer(CStruct):
    """Session record (80 bytes): ``name`` and ``file_set_ser`` (flattened here)."""

    name: str
    files: int
    count: int

    @property
    def file_set(self) -> LuoFileSetSer:
        return LuoFileSetSer(self.files, self.count)


@codec("luo_file_ser", LUO_H, what="luo file")
@dataclass(frozen=True)
class LuoFileSer(CStruct):
    """File record (64 bytes): handler ``compatible``, its opaque ``data``, ``token``."""

    compatible: str
    data: int
    token: int


@codec("luo_flb_header_ser", LUO_FLB_H, what="luo flb header")
@dataclass(frozen=True)
class LuoFlbHeaderSer(CStruct):
    """FLB page header (P1+): ``pgcnt`` (always 1), ``count``; records follow."""

    pgcnt: int
    count: int


@codec("luo_flb_ser", LUO_FLB_H, what="luo flb")
@dataclass(frozen=True)
class LuoFlbSer(CStruct):
    """FLB record (64 bytes): ``name`` (the FLB compatible), opaque ``data``, ``count``."""

    name: str
    data: int
    count: int


@codec("luo_ser", LUO_V5_H)
@dataclass(frozen=True)
class LuoSer(CStruct):
    """``luo-v5`` blob (32 bytes): ``compatible``, ``liveupdate_num``, first session block,
    FLB header page.  Use :func:`decode_luo_v5` for the incoming checks."""

    compatible: str
    liveupdate_num: int
    sessions_pa: int
    flbs_pa: int


assert block_capacity(LuoSessionSer.SIZE) == LUO_SESSIONS_PER_BLOCK
assert block_capacity(LuoFileSer.SIZE) == LUO_FILES_PER_BLOCK
assert (LUO_SESSION_BLOCK_SIZE - LuoSessionHeaderSer.SIZE) // LuoSessionSer.SIZE == LUO_SESSION_MAX
assert LUO_FILE_ARRAY_SIZE // LuoFileSer.SIZE == LUO_FILE_MAX
assert (LUO_FLB_BLOCK_SIZE - LuoFlbHeaderSer.SIZE) // LuoFlbSer.SIZE == LUO_FLB_MAX
assert KHO_BLOCK_SIZE == PAGE_SIZE


# ----------------------------------------------------------------- array / page images


def encode_session_block_v1(sessions: Sequence[LuoSessionSer]) -> bytes:
    """P0/P1 session block image (65536 bytes): header ``count`` then the array, zero fill."""
    if len(sessions) > LUO_SESSION_MAX:
        raise ValueError(f"{len(sessions)} sessions exceed LUO_SESSION_MAX {LUO_SESSION_MAX}")
    out = LuoSessionHeaderSer(len(sessions)).encode() + b"".join(s.encode() for s in sessions)
    return out.ljust(LUO_SESSION_BLOCK_SIZE, b"\0")


def decode_session_block_v1(buf: bytes, what: str = "luo session block") -> list[LuoSessionSer]:
    """Sessions of a P0/P1 session block; ``count > LUO_SESSION_MAX`` is ``bad-value``."""
    hdr = LuoSessionHeaderSer.decode(buf, 0, what)
    if hdr.count > LUO_SESSION_MAX:
        raise DecodeError(what, 0, "luo_session_header_ser.count",
                          f"count {hdr.count} exceeds LUO_SESSION_MAX {LUO_SESSION_MAX}")
    base = LuoSessionHeaderSer.SIZE
    return [LuoSessionSer.decode(buf, base + i * LuoSessionSer.SIZE, what)
            for i in range(hdr.count)]


def encode_file_array_v1(files: Sequence[LuoFileSer]) -> bytes:
    """P0/P1 per-session file array image (8192 bytes, no header)."""
    if len(files) > LUO_FILE_MAX:
        raise ValueError(f"{len(files)} files exceed LUO_FILE_MAX {LUO_FILE_MAX}")
    return b"".join(f.encode() for f in files).ljust(LUO_FILE_ARRAY_SIZE, b"\0")


def decode_file_array_v1(buf: bytes, count: int,
                         what: str = "luo file array") -> list[LuoFileSer]:
    """``count`` file records of a P0/P1 file array (``count`` from the session record)."""
    if count > LUO_FILE_MAX:
        raise DecodeError(what, 0, "luo_file_set_ser.count",
                          f"count {count} exceeds LUO_FILE_MAX {LUO_FILE_MAX}")
    return [LuoFileSer.decode(buf, i * LuoFileSer.SIZE, what) for i in range(count)]


def encode_flb_block(flbs: Sequence[LuoFlbSer]) -> bytes:
    """FLB page image (4096 bytes): ``{pgcnt=1, count}`` then the records, zero fill."""
    if len(flbs) > LUO_FLB_MAX:
        raise ValueError(f"{len(flbs)} FLBs exceed LUO_FLB_MAX {LUO_FLB_MAX}")
    out = LuoFlbHeaderSer(LUO_FLB_PGCNT, len(flbs)).encode() + b"".join(f.encode() for f in flbs)
    return out.ljust(LUO_FLB_BLOCK_SIZE, b"\0")


def decode_flb_block(buf: bytes, what: str = "luo flb block") -> list[LuoFlbSer]:
    """FLB records of an FLB page; ``count > LUO_FLB_MAX`` is ``bad-value``.

    ``pgcnt`` is not checked (the kernel only uses it to free the page).
    """
    hdr = LuoFlbHeaderSer.decode(buf, 0, what)
    if hdr.count > LUO_FLB_MAX:
        raise DecodeError(what, 8, "luo_flb_header_ser.count",
                          f"count {hdr.count} exceeds LUO_FLB_MAX {LUO_FLB_MAX}")
    base = LuoFlbHeaderSer.SIZE
    return [LuoFlbSer.decode(buf, base + i * LuoFlbSer.SIZE, what) for i in range(hdr.count)]


# ----------------------------------------------------------------- luo-v5 blob


def encode_luo_v5(liveupdate_num: int, sessions_pa: int, flbs_pa: int) -> bytes:
    """The 32-byte ``luo-v5`` KHO blob."""
    return LuoSer(LUO_V5_COMPATIBLE, liveupdate_num, sessions_pa, flbs_pa).encode()


def decode_luo_v5(blob: bytes, what: str = "LUO blob") -> LuoSer:
    """Incoming checks of spec luo.md §5.2 for the raw ``luo_ser`` blob.

    Size below 32 → ``truncated``; the compatible field is compared over all
    8 bytes with ``"luo-v5"`` NUL-padded → ``bad-compatible``.  (Kernel: both
    ``-EINVAL`` → panic.)
    """
    if len(blob) < LuoSer.SIZE:
        raise DecodeError(what, 0, "luo_ser", f"blob is {len(blob)} bytes, needs {LuoSer.SIZE}",
                          kind="truncated")
    want = LUO_V5_COMPATIBLE.encode("ascii").ljust(LUO_V5_COMPAT_LENGTH, b"\0")
    if bytes(blob[:LUO_V5_COMPAT_LENGTH]) != want:
        raise DecodeError(what, 0, "luo_ser.compatible",
                          f"{bytes(blob[:LUO_V5_COMPAT_LENGTH])!r} is not {want!r}",
                          kind="bad-compatible")
    return LuoSer.decode(blob, 0, what)


# ----------------------------------------------------------------- luo-v1 FDT


@dataclass(frozen=True)
class LuoFdt:
    """What a P0/P1 kernel reads from the ``luo-v1`` FDT."""

    liveupdate_num: int
    session_header_pa: int
    flb_header_pa: int | None


def encode_luo_fdt(liveupdate_num: int, session_header_pa: int,
                   flb_header_pa: int | None = None,
                   compatible: str = LUO_FDT_COMPATIBLE) -> bytes:
    """The ``luo-v1`` FDT of spec luo.md §5.1 (node/property order as the kernel writes it).

    ``flb_header_pa=None`` omits the ``luo-flb`` node (P0).  The result is
    packed; the kernel places it in a one-page (``LUO_FDT_SIZE``) buffer.
    ``compatible`` other than the default only for the hand-over mutator.
    """
    def raw64(field: str, v: int) -> bytes:
        return _u(field, v).to_bytes(8, "little")

    children = [fdtlib.FdtNode(LUO_FDT_SESSION_NODE_NAME, [
        ("compatible", LUO_SESSION_COMPATIBLE),
        (LUO_FDT_SESSION_HEADER, raw64(LUO_FDT_SESSION_HEADER, session_header_pa)),
    ])]
    if flb_header_pa is not None:
        children.append(fdtlib.FdtNode(LUO_FDT_FLB_NODE_NAME, [
            ("compatible", LUO_FLB_COMPATIBLE),
            (LUO_FDT_FLB_HEADER, raw64(LUO_FDT_FLB_HEADER, flb_header_pa)),
        ]))
    root = fdtlib.FdtNode("", [
        ("compatible", compatible),
        (LUO_FDT_LIVEUPDATE_NUM, raw64(LUO_FDT_LIVEUPDATE_NUM, liveupdate_num)),
    ], children)
    blob = bytes(fdtlib.build(root))
    assert len(blob) <= LUO_FDT_SIZE
    return blob


def decode_luo_fdt(blob: bytes, require_flb: bool, what: str = "LUO FDT") -> LuoFdt:
    """Incoming checks of spec luo.md §5.1, in the kernel's order.

    Compatible checks follow ``fdt_node_check_compatible`` (any entry of the
    string list matches) and raise ``bad-compatible``; missing nodes or
    properties and u64 properties that are not exactly 8 bytes raise
    ``bad-value`` (kernel: ``-EINVAL``, for a missing ``luo-flb`` node
    ``-ENOENT``; every one panics).  ``require_flb=False`` models a P0 reader,
    which never looks at ``luo-flb`` (``flb_header_pa`` is then None).
    Pointers are not validated (P0/P1 do not).
    """
    view = fdtlib.parse(what, blob)
    if not view.is_compatible("/", LUO_FDT_COMPATIBLE):
        raise DecodeError(what, 0, "/:compatible", f"root is not compatible with "
                          f"{LUO_FDT_COMPATIBLE!r}", kind="bad-compatible")
    num = view.prop_u64("/", LUO_FDT_LIVEUPDATE_NUM)

    def sub(node: str, compat: str, prop: str, errno: str) -> int:
        path = "/" + node
        if not view.has_node(path):
            raise DecodeError(what, 0, path, f"missing node {path} ({errno})")
        if not view.is_compatible(path, compat):
            raise DecodeError(what, 0, f"{path}:compatible",
                              f"node {path} is not compatible with {compat!r}",
                              kind="bad-compatible")
        return int(view.prop_u64(path, prop))

    sess = sub(LUO_FDT_SESSION_NODE_NAME, LUO_SESSION_COMPATIBLE, LUO_FDT_SESSION_HEADER, "EINVAL")
    flb = (sub(LUO_FDT_FLB_NODE_NAME, LUO_FLB_COMPATIBLE, LUO_FDT_FLB_HEADER, "ENOENT")
           if require_flb else None)
    return LuoFdt(num, sess, flb)


# ----------------------------------------------------------------- ioctl uAPI

LIVEUPDATE_IOCTL_TYPE = 0xBA
LIVEUPDATE_CMD_BASE = 0x00
LIVEUPDATE_CMD_SESSION_BASE = 0x40


def _io(nr: int) -> int:
    """``_IO(LIVEUPDATE_IOCTL_TYPE, nr)``: no size or direction bits."""
    return (LIVEUPDATE_IOCTL_TYPE << 8) | nr


LIVEUPDATE_IOCTL_CREATE_SESSION = _io(LIVEUPDATE_CMD_BASE + 0)       # 0xBA00
LIVEUPDATE_IOCTL_RETRIEVE_SESSION = _io(LIVEUPDATE_CMD_BASE + 1)     # 0xBA01
LIVEUPDATE_SESSION_PRESERVE_FD = _io(LIVEUPDATE_CMD_SESSION_BASE + 0)  # 0xBA40
LIVEUPDATE_SESSION_RETRIEVE_FD = _io(LIVEUPDATE_CMD_SESSION_BASE + 1)  # 0xBA41
LIVEUPDATE_SESSION_FINISH = _io(LIVEUPDATE_CMD_SESSION_BASE + 2)       # 0xBA42
LIVEUPDATE_SESSION_GET_NAME = _io(LIVEUPDATE_CMD_SESSION_BASE + 3)     # 0xBA43 (P3+)
#: Quirk (spec luo.md §2.3): GET_NAME's table entry uses the retrieve_fd struct.
LIVEUPDATE_SESSION_GET_NAME_MIN_SIZE = 16


def ioctl_nr(cmd: int) -> int:
    """The ``nr`` byte of an ioctl command word."""
    return cmd & 0xFF


def _name_field(field: str, name: bytes) -> bytes:
    if not isinstance(name, bytes | bytearray):
        raise ValueError(f"{field}: expected bytes, got {type(name).__name__}")
    if len(name) > LIVEUPDATE_SESSION_NAME_LENGTH:
        raise ValueError(f"{field}: {len(name)} bytes exceed u8[{LIVEUPDATE_SESSION_NAME_LENGTH}]")
    return bytes(name).ljust(LIVEUPDATE_SESSION_NAME_LENGTH, b"\0")


class _NameMixin:
    name: bytes

    @property
    def name_len(self) -> int:
        """``strnlen(name, 64)``: 64 means the field has no NUL."""
        nul = self.name.find(b"\0")
        return len(self.name) if nul < 0 else nul

    def name_text(self) -> str:
        """Bytes up to the first NUL (or all 64), decoded byte-for-byte (latin-1)."""
        return self.name[:self.name_len].decode("latin-1")


# uAPI structs: natural alignment (no __packed).
declare("""
struct liveupdate_ioctl_create_session {
    __u32 size;
    __s32 fd;
    __u8 name[64];                      /* LIVEUPDATE_SESSION_NAME_LENGTH */
};
struct liveupdate_ioctl_retrieve_session {
    __u32 size;
    __s32 fd;
    __u8 name[64];
};
struct liveupdate_session_preserve_fd {
    __u32 size;
    __s32 fd;
    __aligned_u64 token;
};
struct liveupdate_session_retrieve_fd {
    __u32 size;
    __s32 fd;
    __aligned_u64 token;
};
struct liveupdate_session_finish {
    __u32 size;
    __u32 reserved;
};
struct liveupdate_session_get_name {
    __u32 size;
    __u32 reserved;
    __u8 name[64];
};
""")


@dataclass(frozen=True)
class _SessionNameArg(_NameMixin, CStruct):
    size: int = 72
    fd: int = 0
    name: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name_field(f"{self.C_NAME}.name", self.name))


@codec("liveupdate_ioctl_create_session", UAPI_H, what="ioctl argument")
@dataclass(frozen=True)
class LiveupdateIoctlCreateSession(_SessionNameArg):
    """``size`` (in), ``fd`` (out), ``name`` (in; raw bytes so callers can apply
    P0/P1 truncation or P3 strnlen); 72 bytes."""


@codec("liveupdate_ioctl_retrieve_session", UAPI_H, what="ioctl argument")
@dataclass(frozen=True)
class LiveupdateIoctlRetrieveSession(_SessionNameArg):
    """Same layout as create_session: ``size``, ``fd`` (out), ``name`` (in, raw bytes)."""


@dataclass(frozen=True)
class _FdTokenArg(CStruct):
    size: int = 16
    fd: int = 0
    token: int = 0


@codec("liveupdate_session_preserve_fd", UAPI_H, what="ioctl argument")
@dataclass(frozen=True)
class LiveupdateSessionPreserveFd(_FdTokenArg):
    """``size``, ``fd`` (in), ``token`` (in, aligned u64 @8); 16 bytes."""


@codec("liveupdate_session_retrieve_fd", UAPI_H, what="ioctl argument")
@dataclass(frozen=True)
class LiveupdateSessionRetrieveFd(_FdTokenArg):
    """``size``, ``fd`` (out), ``token`` (in); 16 bytes."""


@codec("liveupdate_session_finish", UAPI_H, what="ioctl argument")
@dataclass(frozen=True)
class LiveupdateSessionFinish(CStruct):
    """``size``, ``reserved`` (not checked by the kernel); 8 bytes."""

    size: int = 8
    reserved: int = 0


@codec("liveupdate_session_get_name", UAPI_H, what="ioctl argument")
@dataclass(frozen=True)
class LiveupdateSessionGetName(_NameMixin, CStruct):
    """P3+: ``size``, ``reserved`` (must be 0), ``name`` (out); 72 bytes.  The dispatch
    table's min size is 16 (spec luo.md §2.3)."""

    size: int = 72
    reserved: int = 0
    name: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name_field("liveupdate_session_get_name.name",
                                                     self.name))


@dataclass(frozen=True)
class IoctlDesc:
    """One row of the ioctl table of spec luo.md §2.1."""

    name: str
    cmd: int
    on_session_fd: bool
    arg: type[object]
    min_size: int
    kernel_size: int


IOCTLS: tuple[IoctlDesc, ...] = (
    IoctlDesc("LIVEUPDATE_IOCTL_CREATE_SESSION", LIVEUPDATE_IOCTL_CREATE_SESSION, False,
              LiveupdateIoctlCreateSession, 72, 72),
    IoctlDesc("LIVEUPDATE_IOCTL_RETRIEVE_SESSION", LIVEUPDATE_IOCTL_RETRIEVE_SESSION, False,
              LiveupdateIoctlRetrieveSession, 72, 72),
    IoctlDesc("LIVEUPDATE_SESSION_PRESERVE_FD", LIVEUPDATE_SESSION_PRESERVE_FD, True,
              LiveupdateSessionPreserveFd, 16, 16),
    IoctlDesc("LIVEUPDATE_SESSION_RETRIEVE_FD", LIVEUPDATE_SESSION_RETRIEVE_FD, True,
              LiveupdateSessionRetrieveFd, 16, 16),
    IoctlDesc("LIVEUPDATE_SESSION_FINISH", LIVEUPDATE_SESSION_FINISH, True,
              LiveupdateSessionFinish, 8, 8),
    IoctlDesc("LIVEUPDATE_SESSION_GET_NAME", LIVEUPDATE_SESSION_GET_NAME, True,
              LiveupdateSessionGetName, LIVEUPDATE_SESSION_GET_NAME_MIN_SIZE,
              LIVEUPDATE_SESSION_GET_NAME_MIN_SIZE),
)
IOCTL_BY_CMD: dict[int, IoctlDesc] = {d.cmd: d for d in IOCTLS}
