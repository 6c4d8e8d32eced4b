"""Flattened Device Tree helpers over pylibfdt (never a hand-written FDT encoder).

Writing uses libfdt's sequential-write API (``FdtSw``), the same one the kernel
uses for the LUO FDT (kernel/liveupdate/luo_core.c: ``fdt_create``,
``fdt_finish_reservemap``, ``fdt_begin_node``, ``fdt_property*``), so node and
property order are exactly the call order and the blob is byte-identical to
what the kernel would produce for the same calls.

Reading validates the header in Python first (magic, ``totalsize`` within the
blob, so libfdt never reads past the buffer), then runs libfdt's
``fdt_check_full`` over the tree.  Every libfdt call made by :class:`FdtView`
is guarded: malformed input only ever raises :class:`DecodeError`.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import libfdt

from luosim.abi.errors import DecodeError

FDT_MAGIC = 0xD00DFEED
FDT_HEADER_SIZE = 40  # struct fdt_header, v17: ten big-endian u32

PropValue = bytes | str


@dataclass
class FdtNode:
    """A node to build: ``props`` and ``children`` are emitted in list order.

    A ``str`` value is written NUL-terminated (``fdt_property_string``);
    ``bytes`` are written as-is (``fdt_property``).  The root node's name is
    ``""`` (``"/"`` is accepted as an alias).
    """

    name: str
    props: list[tuple[str, PropValue]] = field(default_factory=list)
    children: list[FdtNode] = field(default_factory=list)


def _emit(sw: libfdt.FdtSw, node: FdtNode, root: bool) -> None:
    name = "" if root and node.name in ("", "/") else node.name
    if not root and (not name or "/" in name):
        raise ValueError(f"invalid FDT node name {name!r}")
    sw.begin_node(name)
    seen: set[str] = set()
    for pname, value in node.props:
        if not pname or pname in seen:
            raise ValueError(f"node {name or '/'!r}: empty or duplicate property {pname!r}")
        seen.add(pname)
        if isinstance(value, str):
            sw.property_string(pname, value)
        else:
            sw.property(pname, bytes(value))
    names: set[str] = set()
    for child in node.children:
        if child.name in names:
            raise ValueError(f"node {name or '/'!r}: duplicate child {child.name!r}")
        names.add(child.name)
        _emit(sw, child, root=False)
    sw.end_node()


def build(node: FdtNode) -> bytes:
    """Build a packed FDT (empty reserve map) from ``node`` as the root."""
    try:
        sw = libfdt.FdtSw()
        sw.finish_reservemap()
        _emit(sw, node, root=True)
        fdt = sw.as_fdt()
        fdt.pack()
        return bytes(fdt.as_bytearray())
    except libfdt.FdtException as exc:
        raise ValueError(f"libfdt failed to build the tree: {exc}") from exc


def build_fdt(root_props: Sequence[tuple[str, PropValue]],
              nodes: Sequence[tuple[str, Sequence[tuple[str, PropValue]]]]) -> bytes:
    """Convenience: a root with ``root_props`` and one level of ``nodes``."""
    return build(FdtNode("", list(root_props),
                         [FdtNode(n, list(p)) for n, p in nodes]))


def _strlist(raw: bytes) -> list[str] | None:
    """A device-tree string list (``"a\\0b\\0"``), or None if it is not one."""
    if not raw or raw[-1] != 0:
        return None
    parts = raw[:-1].split(b"\0")
    try:
        return [p.decode("ascii") for p in parts]
    except UnicodeDecodeError:
        return None


class FdtView:
    """Read-only, validated view of an FDT blob; all lookups raise only ``DecodeError``."""

    def __init__(self, what: str, blob: bytes, fdt: libfdt.Fdt, off_dt_struct: int) -> None:
        self.what = what
        self.blob = blob
        self._fdt = fdt
        self._off_struct = off_dt_struct

    # -- internals -----------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, field_name: str, offset: int = 0) -> Iterator[None]:
        try:
            yield
        except DecodeError:
            raise
        except libfdt.FdtException as exc:
            raise DecodeError(self.what, offset, field_name,
                              f"libfdt: {exc}", kind="bad-fdt") from None
        except Exception as exc:  # swig/codec errors on corrupt trees
            raise DecodeError(self.what, offset, field_name, f"libfdt: {exc!r}",
                              kind="bad-fdt") from None

    def _node(self, path: str) -> int:
        with self._guard(path):
            off = self._fdt.path_offset(path, quiet=(libfdt.NOTFOUND,))
        if off < 0:
            raise DecodeError(self.what, 0, path, f"missing node {path}")
        return int(off)

    # -- queries -------------------------------------------------------------
    def has_node(self, path: str) -> bool:
        with self._guard(path):
            off = self._fdt.path_offset(path, quiet=(libfdt.NOTFOUND,))
        return bool(off >= 0)

    def prop(self, path: str, name: str) -> bytes:
        """Raw value of property ``name`` of node ``path`` (missing → ``bad-value``)."""
        node = self._node(path)
        where = self._off_struct + node
        with self._guard(f"{path}:{name}", where):
            val = self._fdt.getprop(node, name, quiet=(libfdt.NOTFOUND,))
        if isinstance(val, int):
            raise DecodeError(self.what, where, f"{path}:{name}",
                              f"missing property {name!r} in node {path}")
        return bytes(val)

    def prop_str(self, path: str, name: str) -> str:
        """A single NUL-terminated ASCII string property."""
        raw = self.prop(path, name)
        lst = _strlist(raw)
        if lst is None or len(lst) != 1:
            raise DecodeError(self.what, self._off_struct + self._node(path), f"{path}:{name}",
                              f"not a single NUL-terminated ASCII string: {raw[:32]!r}")
        return lst[0]

    def prop_strlist(self, path: str, name: str) -> list[str]:
        """A string-list property (e.g. ``compatible``)."""
        raw = self.prop(path, name)
        lst = _strlist(raw)
        if lst is None:
            raise DecodeError(self.what, self._off_struct + self._node(path), f"{path}:{name}",
                              f"not a NUL-terminated ASCII string list: {raw[:32]!r}")
        return lst

    def prop_u64(self, path: str, name: str) -> int:
        """A raw CPU-native (little-endian) u64; the value must be exactly 8 bytes."""
        raw = self.prop(path, name)
        if len(raw) != 8:
            raise DecodeError(self.what, self._off_struct + self._node(path), f"{path}:{name}",
                              f"expected 8 bytes, got {len(raw)}")
        return int.from_bytes(raw, "little")

    def is_compatible(self, path: str, compatible: str) -> bool:
        """``fdt_node_check_compatible`` semantics: any entry of the list matches exactly.

        A missing or malformed ``compatible`` property is "not compatible".
        """
        node = self._node(path)
        with self._guard(f"{path}:compatible", self._off_struct + node):
            val = self._fdt.getprop(node, "compatible", quiet=(libfdt.NOTFOUND,))
        if isinstance(val, int):
            return False
        raw = bytes(val)
        # libfdt's stringlist search: entries separated by NUL, exact match.
        return compatible.encode("ascii") in raw.split(b"\0")[: raw.count(b"\0")]

    def subnodes(self, path: str) -> list[str]:
        """Names of the direct children of ``path`` in tree order."""
        node = self._node(path)
        out: list[str] = []
        with self._guard(path, self._off_struct + node):
            off = self._fdt.first_subnode(node, quiet=(libfdt.NOTFOUND,))
            while off >= 0:
                out.append(str(self._fdt.get_name(off)))
                off = self._fdt.next_subnode(off, quiet=(libfdt.NOTFOUND,))
        return out

    def props(self, path: str) -> list[tuple[str, bytes]]:
        """``(name, raw value)`` of every property of ``path`` in tree order."""
        node = self._node(path)
        out: list[tuple[str, bytes]] = []
        with self._guard(path, self._off_struct + node):
            off = self._fdt.first_property_offset(node, quiet=(libfdt.NOTFOUND,))
            while off >= 0:
                p = self._fdt.get_property_by_offset(off)
                out.append((str(p.name), bytes(p)))
                off = self._fdt.next_property_offset(off, quiet=(libfdt.NOTFOUND,))
        return out


def parse(what: str, blob: bytes) -> FdtView:
    """Validate ``blob`` as an FDT and return a view of it.

    Errors: ``truncated`` (shorter than the header or than ``totalsize``),
    ``bad-magic``, ``bad-fdt`` (header fields out of range or libfdt's
    ``fdt_check_full`` rejects the tree; the libfdt error is named).
    """
    blob = bytes(blob)
    if len(blob) < FDT_HEADER_SIZE:
        raise DecodeError(what, 0, "fdt_header", f"needs {FDT_HEADER_SIZE} bytes, blob has "
                          f"{len(blob)}", kind="truncated")
    (magic, totalsize, off_struct, off_strings, off_rsv, version, last_comp,
     _cpu, size_strings, size_struct) = struct.unpack_from(">10I", blob, 0)
    if magic != FDT_MAGIC:
        raise DecodeError(what, 0, "fdt_header.magic",
                          f"{magic:#010x} is not {FDT_MAGIC:#010x}", kind="bad-magic")
    if totalsize > len(blob):
        raise DecodeError(what, 4, "fdt_header.totalsize",
                          f"totalsize {totalsize} exceeds the {len(blob)}-byte blob",
                          kind="truncated")
    if totalsize < FDT_HEADER_SIZE:
        raise DecodeError(what, 4, "fdt_header.totalsize",
                          f"totalsize {totalsize} smaller than the header", kind="bad-fdt")
    for name, foff, val in (("off_dt_struct", 8, off_struct), ("off_dt_strings", 12, off_strings),
                            ("off_mem_rsvmap", 16, off_rsv)):
        if val > totalsize:
            raise DecodeError(what, foff, f"fdt_header.{name}",
                              f"{val:#x} beyond totalsize {totalsize:#x}", kind="bad-fdt")
    if version >= 17 and (off_struct + size_struct > totalsize
                          or off_strings + size_strings > totalsize):
        raise DecodeError(what, 32, "fdt_header.size_dt_struct",
                          "structure or strings block extends beyond totalsize", kind="bad-fdt")
    buf = bytearray(blob[:totalsize])
    try:
        rc = libfdt.fdt_check_full(buf, totalsize)
        if rc == 0:
            fdt = libfdt.Fdt(buf)
    except Exception as exc:
        raise DecodeError(what, 0, "fdt", f"libfdt: {exc!r}", kind="bad-fdt") from None
    if rc != 0:
        raise DecodeError(what, 0, "fdt",
                          f"libfdt fdt_check_full: {libfdt.fdt_strerror(rc)} "
                          f"(version {version}, last_comp_version {last_comp})", kind="bad-fdt")
    return FdtView(what, blob[:totalsize], fdt, off_struct)
