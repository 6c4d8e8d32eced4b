"""Declarative codecs: a kernel struct is written once, as its C declaration.

:func:`declare` feeds C text, as in the kernel header (``} __packed;`` or
natural alignment, per struct), to dissect.cstruct, which parses types,
arrays, bit-fields, nested structs and unions.  The byte layout is then
computed here with GCC's rules for x86-64 (dissect.cstruct keeps a bit-field's
whole storage unit even in a packed struct; GCC ``__packed`` gives a
``u32 x:1`` one byte — ``struct iommu_domain_ser`` depends on that).  From
the layout :func:`codec` builds, for a frozen dataclass:

* ``SIZE``, ``OFFSETS`` (every leaf field, dotted path -> byte offset),
  ``FIELDS`` (leaf path, offset, size);
* ``encode()``: range-checked (a value that does not fit its field is a
  ``ValueError`` naming ``struct.field``, as :func:`check_uint` says);
* ``decode(buf, offset, what)``: short input is a ``truncated``
  :class:`~luosim.abi.errors.DecodeError` naming the first missing field; a
  ``char[]`` without its NUL or with a non-ASCII byte is ``bad-value``.

Encode and decode run through one precompiled :class:`struct.Struct` and a
function generated once per struct (no per-call interpretation of the
layout), so bulk paths such as memfd folio arrays stay cheap.

Python attributes map to C fields by name: the full dotted path, or the leaf
name when unique (``file_set_ser.files`` -> ``files``), or an explicit
rename.  A C field no attribute maps to (padding, reserved bits) is written
as zero and ignored on read.  A nested struct whose Python attribute is
itself a codec is encoded through that codec.  A union is encoded through its
first member (the one this model uses; the others are declared for size).
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, Self, TypeVar

from dissect.cstruct import cstruct
from dissect.cstruct.types.base import BaseArray
from dissect.cstruct.types.char import CharArray
from dissect.cstruct.types.packed import Packed
from dissect.cstruct.types.structure import Structure, Union

from luosim.abi.errors import DecodeError, cstr, need

_CS = cstruct()
# Kernel fixed-width names (dissect's own u8/u16 mean 8/16 *bytes*).
for _name, _base in (("u8", "uint8"), ("u16", "uint16"), ("u32", "uint32"), ("u64", "uint64"),
                     ("s8", "int8"), ("s16", "int16"), ("s32", "int32"), ("s64", "int64"),
                     ("__u8", "uint8"), ("__u16", "uint16"), ("__u32", "uint32"),
                     ("__u64", "uint64"), ("__s32", "int32"), ("__aligned_u64", "uint64"),
                     ("phys_addr_t", "uint64")):
    _CS.typedefs[_name] = _CS.resolve(_base)
_PACKED: set[str] = set()
_PENDING: list[str] = []
_ATTR_PACKED = re.compile(r"\}\s*(?:__packed|__attribute__\s*\(\(\s*packed\s*\)\))\s*;")


def declare(c_source: str) -> None:
    """Register the structs of ``c_source``, written as in the header.

    A struct whose closing brace is followed by ``__packed`` (or
    ``__attribute__((packed))``) is packed; any other struct has natural
    x86-64 alignment.  A struct name is declared once for the whole process
    (another tree's struct of the same name takes a ``__variant`` suffix).
    Parsing is deferred to the first :func:`layout` call, so all pending
    declarations go through dissect.cstruct in one pass.
    """
    for m in _ATTR_PACKED.finditer(c_source):
        _PACKED.add(_struct_name_before(c_source, m.start()))
    _PENDING.append(_ATTR_PACKED.sub("};", c_source))


def _struct_name_before(src: str, close: int) -> str:
    """Name of the top-level ``struct NAME {`` whose body ends at ``close``."""
    depth = 0
    for i in range(close, -1, -1):
        if src[i] == "}":
            depth += 1
        elif src[i] == "{":
            depth -= 1
            if depth == 0:
                m = re.search(r"struct\s+(\w+)\s*$", src[:i])
                if m is None:
                    raise ValueError("__packed after a body that is not 'struct NAME {'")
                return m.group(1)
    raise ValueError("unbalanced braces in declaration")


def _flush() -> None:
    if _PENDING:
        text = "\n".join(_PENDING)
        _PENDING.clear()
        _CS.load(text, compiled=False)


@dataclass(frozen=True)
class Leaf:
    """One scalar, array or bit-field of a flattened struct."""

    path: str
    offset: int  # byte offset of the storage unit
    size: int  # bytes of the storage unit (whole array / bit-field group)
    kind: str  # "int", "char", "array", "bits"
    signed: bool = False
    count: int = 0  # array elements
    elem: int = 0  # array element size
    shift: int = 0  # bit-field position inside its group
    bits: int = 0  # value width in bits


@dataclass(frozen=True)
class Layout:
    """Byte layout of one struct: its leaves in offset order and total size."""

    name: str
    size: int
    leaves: tuple[Leaf, ...]
    nests: tuple[tuple[str, int, int], ...] = ()  # named nested struct: (prefix, offset, size)

    @property
    def offsets(self) -> dict[str, int]:
        return {leaf.path: leaf.offset for leaf in self.leaves}


def _is_packed(t: Any) -> bool:
    return t.__name__ in _PACKED


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _leaves(t: Any, base: int, prefix: str, out: list[Leaf],
            nests: list[tuple[str, int, int]]) -> tuple[int, int]:
    """Append the leaves of struct/union ``t`` placed at ``base``; return (size, alignment).

    GCC x86-64: a ``__packed`` struct places every member at the next byte
    (bit-fields at the next bit; the member after a bit-field run starts on a
    byte) and has alignment 1; otherwise each member is aligned to its own
    alignment and the size is rounded up to the largest one.
    """
    packed = _is_packed(t)
    if issubclass(t, Union):
        size, align = 0, 1
        for i, f in enumerate(t.__fields__):
            sub: list[Leaf] = []
            fsize, falign = _field(f, base, prefix, sub, nests if i == 0 else [])
            size, align = max(size, fsize), max(align, falign)
            if i == 0:
                out.extend(sub)
        align = 1 if packed else align
        return _align_up(size, align), align
    bitpos = 0  # bit cursor from base
    align = 1
    gstart = -1  # bit position where the current bit-field run started
    for f in t.__fields__:
        bits = getattr(f, "bits", None)
        if bits:
            if not packed:
                raise NotImplementedError(f"bit-field {f.name} in naturally aligned {t.__name__}")
            if gstart < 0:
                gstart = bitpos
            out.append(Leaf(prefix + f.name, base + gstart // 8, 0, "bits",
                            shift=bitpos - gstart, bits=bits))
            bitpos += bits
            continue
        if gstart >= 0:  # close the bit-field run: the next member starts on a byte
            bitpos = _align_up(bitpos, 8)
            _close_group(out, base + gstart // 8, (bitpos - gstart) // 8)
            gstart = -1
        falign = 1 if packed else _alignment(f.type)
        off = _align_up(bitpos // 8, falign)
        fsize, falign2 = _field(f, base + off, prefix, out, nests)
        align = max(align, 1 if packed else falign2)
        bitpos = (off + fsize) * 8
    if gstart >= 0:
        bitpos = _align_up(bitpos, 8)
        _close_group(out, base + gstart // 8, (bitpos - gstart) // 8)
    return _align_up(bitpos // 8, align), align


def _alignment(t: Any) -> int:
    """Natural alignment of a member type (structs: of their largest member; packed: 1)."""
    if issubclass(t, Structure):
        if _is_packed(t):
            return 1
        return max((_alignment(f.type) for f in t.__fields__ if not getattr(f, "bits", None)),
                   default=1)
    if issubclass(t, BaseArray):
        return _alignment(t.type)
    return len(t)


def _close_group(out: list[Leaf], offset: int, size: int) -> None:
    if size not in (1, 2, 4, 8):
        raise NotImplementedError(f"bit-field group of {size} bytes")
    for i, leaf in enumerate(out):
        if leaf.kind == "bits" and leaf.offset == offset and leaf.size == 0:
            out[i] = Leaf(leaf.path, offset, size, "bits", shift=leaf.shift, bits=leaf.bits)


def _field(f: Any, off: int, prefix: str, out: list[Leaf],
           nests: list[tuple[str, int, int]]) -> tuple[int, int]:
    """Append the leaves of member ``f`` at ``off``; return its (size, alignment)."""
    t = f.type
    name = f.name
    if issubclass(t, Structure):  # struct, union, anonymous union (name None)
        if name is None:
            return _leaves(t, off, prefix, out, nests)
        size, align = _leaves(t, off, f"{prefix}{name}.", out, nests)
        nests.append((f"{prefix}{name}.", off, size))
        return size, align
    path = prefix + name
    if issubclass(t, CharArray):
        out.append(Leaf(path, off, len(t), "char"))
        return len(t), 1
    if issubclass(t, BaseArray):
        et = t.type
        if not issubclass(et, Packed):
            raise NotImplementedError(f"array of {et.__name__} in {path}")
        n: int = t.num_entries
        if len(et) == 1 and not et.packchar.islower():  # u8[]: raw bytes
            out.append(Leaf(path, off, n, "char"))
            return n, 1
        out.append(Leaf(path, off, len(et) * n, "array", signed=et.packchar.islower(),
                        count=n, elem=len(et)))
        return len(et) * n, len(et)
    if issubclass(t, Packed):
        out.append(Leaf(path, off, len(t), "int", signed=t.packchar.islower(), bits=8 * len(t)))
        return len(t), len(t)
    raise NotImplementedError(f"{path}: unsupported type {t.__name__}")


def layout(name: str) -> Layout:
    """The GCC x86-64 layout of declared ``struct name``."""
    _flush()
    t = _CS.resolve(name)
    out: list[Leaf] = []
    nests: list[tuple[str, int, int]] = []
    size, _align = _leaves(t, 0, "", out, nests)
    return Layout(name, size, tuple(sorted(out, key=lambda x: (x.offset, x.shift))),
                  tuple(nests))


# ----------------------------------------------------------------------------- checks


def check_uint(field: str, value: int, bits: int) -> int:
    """Return ``value`` if it fits an unsigned ``bits``-bit field, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: {value!r} is not an integer")
    if value < 0 or value >> bits:
        raise ValueError(f"{field}: {value:#x} does not fit in u{bits}")
    return value


def check_int(field: str, value: int, bits: int) -> int:
    """Return ``value`` if it fits a signed two's-complement ``bits``-bit field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: {value!r} is not an integer")
    lim = 1 << (bits - 1)
    if not -lim <= value < lim:
        raise ValueError(f"{field}: {value} does not fit in s{bits}")
    return value


def _pack_cstr(value: str, size: int, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{field}: {value!r} is not a string")
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{field}: {value!r} is not ASCII") from None
    if len(raw) >= size:
        raise ValueError(f"{field}: {value!r} does not fit in char[{size}] with its NUL")
    return raw


def _pack_bytes(value: bytes, size: int, field: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"{field}: expected bytes, got {type(value).__name__}")
    if len(value) > size:
        raise ValueError(f"{field}: {len(value)} bytes exceed u8[{size}]")
    return bytes(value)


def _pack_array(value: Sequence[int], count: int, bits: int, signed: bool,
                field: str) -> tuple[int, ...]:
    vals = tuple(value)
    if len(vals) != count:
        raise ValueError(f"{field}: need {count} elements, got {len(vals)}")
    chk = check_int if signed else check_uint
    for i, v in enumerate(vals):
        chk(f"{field}[{i}]", v, bits)
    return vals


# ----------------------------------------------------------------------------- codecs

_FMT = {(1, False): "B", (2, False): "H", (4, False): "I", (8, False): "Q",
        (1, True): "b", (2, True): "h", (4, True): "i", (8, True): "q"}


class CStruct:
    """Base of declarative codecs; :func:`codec` fills in the class variables."""

    C_NAME: ClassVar[str]
    WHAT: ClassVar[str]  # default blob name in decode errors
    SOURCE: ClassVar[str]
    SIZE: ClassVar[int]
    LAYOUT: ClassVar[Layout]
    OFFSETS: ClassVar[dict[str, int]]
    FIELDS: ClassVar[tuple[tuple[str, int, int], ...]]
    STRUCT: ClassVar[struct.Struct]
    _values: ClassVar[Callable[[Any], tuple[Any, ...]]]
    _build: ClassVar[Callable[[tuple[Any, ...], int, bytes, int, str], Any]]

    def encode(self) -> bytes:
        return self.STRUCT.pack(*type(self)._values(self))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str | None = None) -> Self:
        w = cls.WHAT if what is None else what
        if offset < 0 or offset + cls.SIZE > len(buf):
            _truncated(cls, w, buf, offset)
        obj: Self = cls._build(cls.STRUCT.unpack_from(buf, offset), 0, buf, offset, w)
        return obj

    @classmethod
    def decode_array(cls, buf: bytes, count: int, what: str | None = None) -> list[Self]:
        """``count`` consecutive records from the start of ``buf`` (bulk path)."""
        w = cls.WHAT if what is None else what
        n = count * cls.SIZE
        if count < 0 or n > len(buf):
            raise DecodeError(w, len(buf) - len(buf) % cls.SIZE, cls.C_NAME,
                              f"{count} records need {n} bytes, have {len(buf)}",
                              kind="truncated")
        build = cls._build
        size = cls.SIZE
        return [build(v, 0, buf, i * size, w)
                for i, v in enumerate(cls.STRUCT.iter_unpack(memoryview(buf)[:n]))]

    @classmethod
    def encode_array(cls, items: Sequence[Self]) -> bytes:
        """The records back to back (bulk path)."""
        values = cls._values
        return b"".join([cls.STRUCT.pack(*values(o)) for o in items])


def _truncated(cls: type[CStruct], what: str, buf: bytes, offset: int) -> None:
    for path, foff, fsize in cls.FIELDS:
        need(what, buf, offset + foff, fsize, f"{cls.C_NAME}.{path}")
    need(what, buf, offset, cls.SIZE, cls.C_NAME)


C = TypeVar("C", bound=type[CStruct])
_new = object.__new__
_setattr = object.__setattr__


def _make(cls: type, values: dict[str, Any]) -> Any:
    """An instance of frozen dataclass ``cls`` holding ``values`` (no ``__init__``)."""
    obj: Any = _new(cls)
    _setattr(obj, "__dict__", values)
    return obj


def codec(c_name: str, source: str, *, renames: Mapping[str, str] | None = None,
          what: str | None = None) -> Callable[[C], C]:
    """Class decorator: bind a frozen dataclass to declared ``struct c_name``.

    ``source`` names the tree, commit and header the declaration follows.
    ``renames`` maps a C leaf path to the Python attribute holding it;
    ``what`` is the default blob name of decode errors (the struct name).
    """
    def bind(cls: C) -> C:
        if not is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        lay = layout(c_name)
        _compile(cls, lay, c_name, source, dict(renames or {}))
        cls.WHAT = cls.C_NAME if what is None else what
        return cls
    return bind


def _resolve_codec(cls: type, annotation: Any) -> type[CStruct] | None:
    if isinstance(annotation, str):
        mod = sys.modules[cls.__module__].__dict__
        annotation = mod.get(annotation, annotation)
    if isinstance(annotation, type) and issubclass(annotation, CStruct):
        return annotation
    return None


def _compile(cls: type[CStruct], lay: Layout, c_name: str, source: str,
             renames: dict[str, str]) -> None:
    disp = c_name.split("__")[0]  # "name__variant": another tree's struct of the same name
    attrs = [f for f in fields(cls)]  # type: ignore[arg-type]
    by_name = {f.name: f for f in attrs}
    # storage units: one struct item per non-bit leaf, one per bit-field group
    units: list[tuple[int, int, str]] = []  # (offset, size, fmt)
    unit_of: dict[tuple[int, int], int] = {}  # (offset, size) -> index into values
    nvals = 0
    for leaf in lay.leaves:
        key = (leaf.offset, leaf.size)
        if key in unit_of and leaf.kind == "bits":
            continue
        if leaf.kind == "char":
            ufmt = f"{leaf.size}s"
            n = 1
        elif leaf.kind == "array":
            ufmt = f"{leaf.count}{_FMT[(leaf.elem, leaf.signed)]}"
            n = leaf.count
        else:
            ufmt = _FMT[(leaf.size, leaf.signed)]
            n = 1
        unit_of[key] = nvals
        units.append((leaf.offset, leaf.size, ufmt))
        nvals += n
    fmt = "<"
    pos = 0
    for off, size, ufmt in units:
        if off < pos:
            raise NotImplementedError(f"{c_name}: overlapping fields at {off}")
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += ufmt
        pos = off + size
    if lay.size > pos:
        fmt += f"{lay.size - pos}x"
    st = struct.Struct(fmt)
    if st.size != lay.size:
        raise AssertionError(f"{c_name}: struct format {fmt} is {st.size}, layout {lay.size}")

    # map leaves to attributes
    leaf_attr: dict[str, str] = {}
    nested: dict[str, tuple[type[CStruct], str]] = {}  # attr -> (codec, C prefix)
    for f in attrs:
        sub = _resolve_codec(cls, f.type)
        if sub is not None:
            prefix = next((k for k, v in renames.items() if v == f.name), f.name) + "."
            nested[f.name] = (sub, prefix)
    leaf_names: dict[str, list[str]] = {}
    for leaf in lay.leaves:
        leaf_names.setdefault(leaf.path.rsplit(".", 1)[-1], []).append(leaf.path)
    for leaf in lay.leaves:
        if any(leaf.path.startswith(p) for _, p in nested.values()):
            continue
        short = leaf.path.rsplit(".", 1)[-1]
        if leaf.path in renames:
            name = renames[leaf.path]
        elif leaf.path in by_name:
            name = leaf.path
        elif short in by_name and len(leaf_names[short]) == 1 and short not in nested:
            name = short
        else:
            continue  # padding / reserved: zero on encode, ignored on decode
        leaf_attr[leaf.path] = name
    mapped = set(leaf_attr.values()) | set(nested)
    missing = [f.name for f in attrs if f.name not in mapped]
    if missing:
        raise AssertionError(f"{cls.__name__}: attributes {missing} map to no field of "
                             f"struct {c_name}")

    # generate _values (encode) and _build (decode)
    env: dict[str, Any] = {"_cu": check_uint, "_ci": check_int, "_pc": _pack_cstr,
                           "_pb": _pack_bytes, "_pa": _pack_array, "_cstr": cstr, "cls": cls}
    slots: list[str] = ["0"] * nvals
    build_args: dict[str, str] = {}
    for leaf in lay.leaves:
        i = unit_of[(leaf.offset, leaf.size)]
        full = f"{disp}.{leaf.path}"
        attr = leaf_attr.get(leaf.path)
        ftype = str(by_name[attr].type) if attr else ""
        if leaf.kind == "char":
            if attr is None:
                slots[i] = "b''"
            elif ftype == "bytes":
                slots[i] = f"_pb(o.{attr}, {leaf.size}, {full!r})"
                build_args[attr] = f"v[b+{i}]"
            else:
                slots[i] = f"_pc(o.{attr}, {leaf.size}, {full!r})"
                build_args[attr] = f"_cstr(w, v[b+{i}], off+{leaf.offset}, {full!r})"
        elif leaf.kind == "array":
            if attr is not None:
                arr = f"_pa(o.{attr}, {leaf.count}, {8 * leaf.elem}, {leaf.signed}, {full!r})"
                build_args[attr] = f"v[b+{i}:b+{i + leaf.count}]"
                slots[i] = f"*{arr}"
            else:
                slots[i] = ", ".join(["0"] * leaf.count)
            for j in range(1, leaf.count):
                slots[i + j] = ""
        elif leaf.kind == "bits":
            if attr is None:
                continue
            mask = (1 << leaf.bits) - 1
            val = (f"(o.{attr} if o.{attr}.__class__ is int and 0 <= o.{attr} <= {mask:#x} "
                   f"else _cu({full!r}, o.{attr}, {leaf.bits}))")
            if ftype == "bool":
                val = f"(1 if o.{attr} else 0)"
            term = f"({val} << {leaf.shift})" if leaf.shift else val
            slots[i] = term if slots[i] == "0" else f"{slots[i]} | {term}"
            get = f"(v[b+{i}] >> {leaf.shift}) & {mask:#x}" if leaf.shift else \
                f"v[b+{i}] & {mask:#x}"
            build_args[attr] = f"bool({get})" if ftype == "bool" else f"({get})"
        else:
            if attr is None:
                continue
            chk = "_ci" if leaf.signed else "_cu"
            if ftype == "bool":
                slots[i] = f"(1 if o.{attr} else 0)"
                build_args[attr] = f"bool(v[b+{i}])"
            else:
                limit = (1 << leaf.bits) - 1
                if leaf.signed:
                    slots[i] = f"{chk}({full!r}, o.{attr}, {leaf.bits})"
                else:
                    slots[i] = (f"(o.{attr} if o.{attr}.__class__ is int and "
                                f"0 <= o.{attr} <= {limit:#x} else "
                                f"{chk}({full!r}, o.{attr}, {leaf.bits}))")
                build_args[attr] = f"v[b+{i}]"
    for attr, (sub, prefix) in nested.items():
        span = next((n for n in lay.nests if n[0] == prefix), None)
        if span is None or span[2] != sub.SIZE:
            raise AssertionError(f"{c_name}.{attr}: not a struct of {sub.SIZE} bytes")
        first = span[1]
        i = min(unit_of[(lf.offset, lf.size)] for lf in lay.leaves
                if lf.path.startswith(prefix))
        n = len(sub.STRUCT.unpack(bytes(sub.SIZE)))
        env[f"_N_{attr}"] = sub
        slots[i] = f"*_N_{attr}._values(o.{attr})"
        for j in range(1, n):
            slots[i + j] = ""
        build_args[attr] = f"_N_{attr}._build(v, b+{i}, buf, off+{first}, w)"
    src_vals = ", ".join(s for s in slots if s)
    if "__post_init__" in vars(cls) or any("__post_init__" in vars(k) for k in cls.__mro__[1:-1]):
        build = "cls(" + ", ".join(f"{f.name}={build_args[f.name]}" for f in attrs) + ")"
    else:  # a decoded record is valid by construction: skip the frozen __init__
        build = ("_mk(cls, {" + ", ".join(f"{f.name!r}: {build_args[f.name]}" for f in attrs)
                 + "})")
    env["_mk"] = _make
    code = (f"def _values(o):\n    return ({src_vals}{',' if nvals == 1 else ''})\n"
            f"def _build(v, b, buf, off, w):\n    return {build}\n")
    exec(compile(code, f"<cdecl {c_name}>", "exec"), env)  # code generated from the layout
    cls.C_NAME = disp
    cls.SOURCE = source
    cls.SIZE = lay.size
    cls.LAYOUT = lay
    cls.OFFSETS = lay.offsets
    cls.FIELDS = tuple((lf.path, lf.offset, lf.size) for lf in lay.leaves)
    cls.STRUCT = st
    cls._values = staticmethod(env["_values"])
    cls._build = staticmethod(env["_build"])
