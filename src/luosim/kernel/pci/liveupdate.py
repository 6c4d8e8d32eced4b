"""PCI core live-update tracking: models drivers/pci/liveupdate.c (spec pci.md §1-§5, §9, §10).

One :class:`PciLiveupdate` per booted kernel.  It owns the PCI FLB
(``struct liveupdate_flb`` whose compatible is the profile's
``pci_compat``), tracks which ``pci_dev`` are outgoing (to be preserved
across the next kexec) and incoming (preserved by the previous kernel), and
implements the hooks :class:`luosim.kernel.pci.probe.PciLiveupdateHooks`
that the PCI core calls during enumeration, removal and shutdown.

Everything handed over lives in physical memory, written through KHO in
the profile's ABI (:mod:`luosim.abi.pci`):

* ``v6`` — one ``kho_alloc_preserve()`` block holding ``struct pci_ser``
  with a fixed array sized to the devices present at FLB preserve time;
  a new entry takes the first free slot scanning circularly from
  ``nr_devices``; a slot dropping to refcount 0 is zeroed (holes remain);
* ``v7`` — a 12-byte ``pci_ser`` plus a KHO block chain of ``pci_dev_ser``
  (one preserved page per 510 entries); a new entry reuses the first
  refcount-0 entry, else the chain grows by one entry;
* ``v9`` — like v7 with a 16-byte ``pci_ser`` that starts with ``version``
  (1); a mismatch panics.

The new kernel rebuilds its view from memory alone (``pci_flb_retrieve``):
the ``(domain << 16 | bdf)`` lookup map points at the serialized slots, and
refcounts are decremented **in those slots**, so re-enumerating a finished
BDF does not make it incoming again (§4.4).

Model notes (see also the report of issue 4):

* The rwsem of the kernel is not modelled (the model is single threaded).
* Retrieve reads ``pci_ser`` through its physical address without a KHO
  restore (``phys_to_virt``); its error path and FLB finish call
  ``kho_restore_free()``.  LUO profiles with the ``luo-v1`` ABI retry a
  failed retrieve on the next ``get_incoming``, which then reads the freed
  (but not yet reused) ``pci_ser`` again — the kernel's behaviour, visible
  through :meth:`PciLiveupdate.incoming_ser_is_free`.
* Fault point ``pci.flb.retrieve`` fires once per retrieve attempt: errno
  effects fail at the step that can return them (ENOMEM: allocating the
  incoming object; EINVAL: restoring the block set; EBUSY: inserting into
  the lookup map); ``corrupt:*`` effects rewrite the hand-over in memory
  first, so a retry sees the same corruption.  Corruption is applied in
  the new kernel rather than through a separate ``pci.handover`` point
  because PCI has no serialization step of its own: the structures are
  live in memory from the first preserve on.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from luosim.abi.block import KHO_BLOCK_MAX, KHO_BLOCK_SIZE, KhoBlockHeaderSer, walk_chain
from luosim.abi.errors import DecodeError
from luosim.abi.kho import MAX_PAGE_ORDER
from luosim.abi.pci import (
    PCI_DEVS_PER_BLOCK,
    PCI_V9_VERSION,
    PciDevSer,
    PciSerV6,
    PciSerV7,
    PciSerV9,
    fmt_bdf,
    key,
)
from luosim.errors import KernelError, errname
from luosim.faults import point
from luosim.faults.mutator import corrupt_pci_ser
from luosim.hw.memory import PAGE_SIZE, MemoryAccessError
from luosim.kernel.liveupdate.flb import Flb, FlbOpArgs
from luosim.kernel.pci.probe import PciBus, PciDev, needs_acs_enable_quirk

if TYPE_CHECKING:
    from luosim.hw.memory import PhysicalMemory
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.liveupdate.file import FileHandler

FP_RETRIEVE = point(
    "pci.flb.retrieve",
    ("ENOMEM", "EINVAL", "EBUSY", "corrupt:duplicate-entry", "corrupt:version",
     "corrupt:nr-devices", "corrupt:block-chain"),
    "pci_flb_retrieve() in the new kernel: ENOMEM allocating the incoming object, EINVAL "
    "restoring the block set, EBUSY inserting into the lookup map; corrupt:* rewrites the "
    "handed-over pci_ser in memory first (duplicate-entry: two live slots with the same "
    "(domain, bdf) -> EBUSY; version: v9 version 2 -> panic; nr-devices: header says 0 (1 if "
    "it was 0); block-chain: v7/v9 first block points at itself -> EINVAL)")
FP_PRESERVE = point(
    "pci.flb.preserve", ("ENOMEM",),
    "pci_flb_preserve(): allocating the outgoing pci_ser (first file of a PCI-FLB-linked "
    "handler is being preserved) fails")

_U32 = struct.Struct("<I")
_NR_OFF = {"v6": 4, "v7": 0, "v9": 4}
"""Offset of ``nr_devices`` inside ``struct pci_ser`` per ABI."""
_DEVICES_OFF = {"v7": 4, "v9": 8}
"""Offset of the ``devices`` block-chain head inside ``struct pci_ser`` (v7/v9)."""
_SER_SIZE = {"v7": PciSerV7.SIZE, "v9": PciSerV9.SIZE}
_MAX_ALLOC = PAGE_SIZE << MAX_PAGE_ORDER
"""Largest ``kho_alloc_preserve()`` block: a v6 ``pci_ser`` claiming more is treated as
unreadable (the kernel would walk into unrelated memory)."""
_ABIS = ("v6", "v7", "v9")


@dataclass(frozen=True)
class SerSlot:
    """A pointer to one serialized ``struct pci_dev_ser`` (``dev->liveupdate.outgoing``/
    ``.incoming``): the physical address of its 8 bytes."""

    pa: int

    def __repr__(self) -> str:
        return f"<pci_dev_ser@{self.pa:#x}>"


@dataclass(eq=False)
class PciFlbOutgoing:
    """The outgoing FLB object (v6: the ``pci_ser`` itself; v7+: ``struct pci_flb_outgoing``).

    ``slots`` lists the physical address of every ``pci_dev_ser`` in slot
    (v6) or chain (v7/v9) order, holes included; ``blocks`` the block pages
    of the v7/v9 chain in chain order.
    """

    abi: str
    ser_pa: int
    max_nr_devices: int = 0
    slots: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)


@dataclass(eq=False)
class PciFlbIncoming:
    """The incoming FLB object (``struct pci_flb_incoming``): the handed-over
    ``pci_ser`` and the lookup map ``(domain << 16 | bdf) -> slot`` built from the
    slots with refcount > 0 (an xarray in the kernel).  ``blocks`` are the v7/v9
    block pages restored from KHO (freed at FLB finish)."""

    abi: str
    ser_pa: int
    slots: dict[int, int]
    blocks: list[int] = field(default_factory=list)
    freed: bool = False
    """``ser_pa`` was freed by an earlier failed retrieve of this kernel (LUO retried)."""


def _read_dev(mem: PhysicalMemory, pa: int) -> PciDevSer:
    return PciDevSer.decode(mem.read(pa, PciDevSer.SIZE))


def _write_dev(mem: PhysicalMemory, pa: int, dev_ser: PciDevSer) -> None:
    mem.write(pa, dev_ser.encode())


def _read_u32(mem: PhysicalMemory, pa: int) -> int:
    val: int = _U32.unpack(mem.read(pa, 4))[0]
    return val


def _write_u32(mem: PhysicalMemory, pa: int, value: int) -> None:
    mem.write(pa, _U32.pack(value & 0xFFFFFFFF))


class PciFlb(Flb):
    """The PCI core's ``struct liveupdate_flb`` (ops ``pci_liveupdate_flb_ops``)."""

    def __init__(self, lu: PciLiveupdate) -> None:
        super().__init__(lu.compatible)
        self.lu = lu

    def preserve(self, args: FlbOpArgs) -> None:
        self.lu.flb_preserve(args)

    def unpreserve(self, args: FlbOpArgs) -> None:
        self.lu.flb_unpreserve(args)

    def retrieve(self, args: FlbOpArgs) -> None:
        self.lu.flb_retrieve(args)

    def finish(self, args: FlbOpArgs) -> None:
        self.lu.flb_finish(args)


class PciLiveupdate:
    """PCI live update of one kernel: FLB, device tracking and enumeration hooks.

    Public API (the driver-facing exports of drivers/pci/liveupdate.c):
    :meth:`register_flb`, :meth:`unregister_flb`, :meth:`preserve`,
    :meth:`unpreserve`, :meth:`finish`, :meth:`is_incoming`.  Hooks for
    :class:`~luosim.kernel.pci.probe.PciSubsystem`: :meth:`setup_device`,
    :meth:`cleanup_device`, :meth:`scan_bridge_begin`, :meth:`scan_bridge_end`,
    :meth:`init_acs`, :meth:`enable_acs`, :meth:`configure_ari`,
    :meth:`refuse_bus_numbers`, :meth:`is_outgoing`, :meth:`freeze`.
    Read-only accessors for invariant checks: :meth:`outgoing_entries`,
    :meth:`outgoing_nr_devices`, :meth:`incoming_entries`,
    :meth:`incoming_nr_devices`, :meth:`pending_incoming`, :attr:`had_incoming`.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        profile = kernel.profile
        self.abi: str = profile.pci_abi
        if self.abi not in _ABIS and self.abi != "none":  # "none": built without the series
            raise ValueError(f"unknown PCI live-update ABI {self.abi!r}")
        self.compatible: str = profile.pci_compat
        self.cleanup_rule: str = profile.pci_cleanup
        self.bus_rule: str = profile.pci_bus_rule
        self.flb = PciFlb(self)
        self._out: PciFlbOutgoing | None = None
        self._in: PciFlbIncoming | None = None
        self._had_incoming = False
        self._enoent_logged = False
        self._freed_sers: set[int] = set()
        self.retrieve_attempts = 0
        """How many times ``pci_flb_retrieve()`` ran in this kernel (a failed one may be
        retried by LUO)."""
        self.incoming_finished = False
        """The incoming FLB was finished (``pci_flb_finish()`` ran)."""

    # ------------------------------------------------------------------ helpers
    @property
    def mem(self) -> PhysicalMemory:
        return self.kernel.machine.memory

    def _log(self, level: str, msg: str) -> None:
        self.kernel.printk(level, "pci", f"liveupdate: {msg}")

    def _warn(self, msg: str) -> None:
        """``WARN()`` / ``pci_WARN()``."""
        self.kernel.warn("pci", f"liveupdate: {msg}")

    def _nr_pa(self, ser_pa: int) -> int:
        return ser_pa + _NR_OFF[self.abi]

    def _refcount(self, slot: SerSlot | int) -> int:
        pa = slot.pa if isinstance(slot, SerSlot) else slot
        return _read_dev(self.mem, pa).refcount

    # ================================================================== FLB ops
    def flb_preserve(self, args: FlbOpArgs) -> None:
        """Models ``pci_flb_preserve()``: allocate the outgoing ``pci_ser`` (KHO-preserved).

        v6 sizes the slot array to every ``pci_dev`` present now (bridges and
        VFs included, future hot-plugged devices not); v7/v9 start an empty
        block set.  ``args.data`` is the physical address of ``pci_ser``.
        """
        k = self.kernel
        k.machine.faults.check(FP_PRESERVE, self.compatible)
        kho = k.kho
        if self.abi == "v6":
            nr_slots = len(k.pci.devices())
            size = PciSerV6.HEADER_SIZE + PciDevSer.SIZE * nr_slots
            pa = kho.alloc_preserve(size)
            self.mem.write(pa, struct.pack("<II", nr_slots, 0))  # slots: zeroed by alloc
            out = PciFlbOutgoing("v6", pa, nr_slots,
                                 [pa + PciSerV6.HEADER_SIZE + PciDevSer.SIZE * i
                                  for i in range(nr_slots)])
            self._log("debug", f"Preserved struct pci_ser with room for {nr_slots} devices")
        else:
            pa = kho.alloc_preserve(_SER_SIZE[self.abi])
            blob = (PciSerV7(0, 0).encode() if self.abi == "v7"
                    else PciSerV9(PCI_V9_VERSION, 0, 0).encode())
            self.mem.write(pa, blob)
            out = PciFlbOutgoing(self.abi, pa)
            self._log("debug", "Preserved struct pci_ser (empty block set)")
        args.obj = out
        args.data = pa
        self._out = out

    def flb_unpreserve(self, args: FlbOpArgs) -> None:
        """Models ``pci_flb_unpreserve()``: WARN if devices are still preserved, free all."""
        out: PciFlbOutgoing = args.obj
        nr = _read_u32(self.mem, self._nr_pa(out.ser_pa))
        if nr:
            self._warn(f"WARNING: freeing outgoing pci_ser with nr_devices = {nr}")
        kho = self.kernel.kho
        for blk in out.blocks:
            kho.unpreserve_free(blk)
        kho.unpreserve_free(out.ser_pa)
        if self._out is out:
            self._out = None
        self._log("debug", "Unpreserved struct pci_ser")

    def flb_retrieve(self, args: FlbOpArgs) -> None:
        """Models ``pci_flb_retrieve()`` in the new kernel, from memory alone.

        Reads ``pci_ser`` at ``args.data`` in this profile's ABI (never by the
        compatible string alone), restores the v7/v9 block set from KHO and
        builds the lookup map over slots with refcount > 0.  A duplicate key is
        EBUSY, a bad block chain EINVAL, a v9 version other than 1 a panic.
        On every error the restored blocks are freed and the ``pci_ser`` goes
        through ``kho_restore_free()`` before the error is returned.
        """
        self.retrieve_attempts += 1
        k = self.kernel
        mem = self.mem
        ser_pa = args.data
        effect = k.machine.faults.hit(FP_RETRIEVE, f"{self.compatible} @ {ser_pa:#x}")
        blocks: list[int] = []
        try:
            if effect == "ENOMEM":
                raise KernelError(errno.ENOMEM, "allocating the incoming PCI FLB object")
            if effect is not None and effect.startswith("corrupt:"):
                self._corrupt(ser_pa, effect)
            if self.abi == "v6":
                slot_pas = self._retrieve_v6(ser_pa)
            else:
                slot_pas = self._retrieve_blockset(ser_pa, blocks)
            if effect == "EINVAL":  # v7/v9: after the blocks were restored
                raise KernelError(errno.EINVAL, "restoring the pci_dev_ser block set")
            slots: dict[int, int] = {}
            for pa in slot_pas:
                ser = _read_dev(mem, pa)
                if not ser.refcount:
                    continue
                kk = ser.key
                if effect == "EBUSY" or kk in slots:
                    raise KernelError(errno.EBUSY, f"duplicate incoming entry "
                                      f"{fmt_bdf(ser.domain, ser.bdf)}")
                slots[kk] = pa
        except (KernelError, MemoryAccessError, DecodeError) as exc:
            err = exc if isinstance(exc, KernelError) else KernelError(errno.EINVAL, str(exc))
            for blk in blocks:
                k.mm.free_pages(blk)
            k.kho.restore_free(ser_pa)
            self._freed_sers.add(ser_pa)
            self._log("err", f"failed to retrieve incoming pci_ser: {err}")
            raise err from None
        inc = PciFlbIncoming(self.abi, ser_pa, slots, blocks, ser_pa in self._freed_sers)
        args.obj = inc
        self._in = inc
        self._had_incoming = bool(slots)
        self._log("info", f"retrieved incoming pci_ser: {len(slots)} preserved devices, "
                          f"nr_devices {_read_u32(mem, self._nr_pa(ser_pa))}")

    def _retrieve_v6(self, ser_pa: int) -> list[int]:
        mem = self.mem
        hdr = mem.read(ser_pa, PciSerV6.HEADER_SIZE)
        max_nr, _nr = struct.unpack("<II", hdr)
        size = PciSerV6.HEADER_SIZE + PciDevSer.SIZE * max_nr
        if size > _MAX_ALLOC:
            raise KernelError(errno.EINVAL, f"pci_ser claims {max_nr} slots ({size} bytes), "
                              "more than any preserved allocation")
        mem.check_range(ser_pa, size)
        return [ser_pa + PciSerV6.HEADER_SIZE + PciDevSer.SIZE * i for i in range(max_nr)]

    def _retrieve_blockset(self, ser_pa: int, blocks: list[int]) -> list[int]:
        """v7/v9: decode ``pci_ser`` and restore its block chain (kho_block_set_restore)."""
        k = self.kernel
        mem = self.mem
        raw = mem.read(ser_pa, _SER_SIZE[self.abi])
        if self.abi == "v9":
            ser9 = PciSerV9.decode(raw)
            if ser9.version != PCI_V9_VERSION:
                k.panic(f"PCI: liveupdate: incoming pci_ser version {ser9.version} "
                        f"is not {PCI_V9_VERSION}")
            head = ser9.devices
        else:
            head = PciSerV7.decode(raw).devices

        def read_block(pa: int) -> bytes:
            if k.kho.restore_folio(pa) is None:
                raise KernelError(errno.EINVAL, f"pci_dev_ser block {pa:#x} was not preserved")
            blocks.append(pa)
            return mem.read(pa, KHO_BLOCK_SIZE)

        walk_chain(read_block, head, PciDevSer.SIZE, "pci_ser devices")
        slot_pas: list[int] = []
        for blk in blocks:
            count = mem.read_u64(blk + 8)
            slot_pas.extend(blk + KhoBlockHeaderSer.SIZE + PciDevSer.SIZE * i
                            for i in range(count))
        return slot_pas

    def _corrupt(self, ser_pa: int, effect: str) -> None:
        """Apply a ``corrupt:*`` effect of ``pci.flb.retrieve`` to the hand-over in memory
        (through the ABI codecs, in luosim.faults.mutator)."""
        what = effect.partition(":")[2]
        self._log("info", f"fault {effect}: {corrupt_pci_ser(self.mem, self.abi, ser_pa, what)}")

    def flb_finish(self, args: FlbOpArgs) -> None:
        """Models ``pci_flb_finish()``: the last incoming reference is gone; free everything.

        v9 panics first if any handed-over device was never finished.
        """
        inc: PciFlbIncoming = args.obj
        k = self.kernel
        if self.abi == "v9":
            left = sorted(fmt_bdf(d.domain, d.bdf) for d in
                          (_read_dev(self.mem, pa) for pa in inc.slots.values()) if d.refcount)
            if left:
                k.panic(f"PCI: liveupdate: preserved devices never finished: {', '.join(left)}")
        for blk in inc.blocks:
            k.mm.free_pages(blk)
        k.kho.restore_free(inc.ser_pa)
        if self._in is inc:
            self._in = None
        self.incoming_finished = True
        self._log("info", "incoming pci_ser freed (FLB finished)")

    # ================================================================== FLB access
    def _get_outgoing(self) -> PciFlbOutgoing:
        """``pci_liveupdate_flb_get_outgoing()``: EOPNOTSUPP (LU off) or ENOENT (nothing yet)."""
        obj: PciFlbOutgoing | None = self.kernel.liveupdate.flb_get_outgoing(self.flb)
        if obj is None:
            raise KernelError(errno.ENOENT, "no outgoing PCI FLB (no PCI-linked file is "
                              "preserved)")
        return obj

    def _get_incoming(self) -> PciFlbIncoming | None:
        """``pci_liveupdate_flb_get_incoming()``: +1 reference, or None.

        EOPNOTSUPP/ENODATA/ENOENT mean nothing was preserved (ENOENT logs once:
        an ABI mismatch looks the same).  Any other error is a retrieve failure
        handled by the policy ``pci.retrieve_failure``: ``panic`` (v7+ and the
        v6 review) or ``warn`` (v6 as posted: warn once, carry on as if nothing
        was preserved).
        """
        k = self.kernel
        try:
            obj: PciFlbIncoming = k.liveupdate.flb_get_incoming(self.flb)
            return obj
        except KernelError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENODATA):
                return None
            if exc.errno == errno.ENOENT:
                if not self._enoent_logged:
                    self._enoent_logged = True
                    self._log("info", f"no incoming FLB matched {self.compatible}")
                return None
            err = f"-{errname(exc.errno or errno.EIO)}"
            if k.policy("pci.retrieve_failure") == "panic":
                k.panic(f"Failed to retrieve incoming FLB data ({err})")
            k.warn_once("pci", "pci-liveupdate-retrieve",
                        f"liveupdate: Failed to retrieve incoming FLB data: {err}")
            return None

    def _put_incoming(self) -> None:
        """``pci_liveupdate_flb_put_incoming()``."""
        self.kernel.liveupdate.flb_put_incoming(self.flb)

    # ================================================================== driver API
    def register_flb(self, fh: FileHandler) -> None:
        """Models ``pci_liveupdate_register_flb()``: link the PCI FLB to ``fh`` (LUO's errors)."""
        self._log("debug", f'Registering file handler "{fh.compatible}"')
        self.kernel.liveupdate.register_flb(fh, self.flb)

    def unregister_flb(self, fh: FileHandler) -> None:
        """Models ``pci_liveupdate_unregister_flb()`` (void)."""
        self._log("debug", f'Unregistering file handler "{fh.compatible}"')
        self.kernel.liveupdate.unregister_flb(fh, self.flb)

    def preserve(self, dev: PciDev) -> None:
        """Models ``pci_liveupdate_preserve()`` (spec pci.md §4.2), called from a file
        handler's ``preserve``.

        Order: VF -> EINVAL (v9: after the FLB lookup, per path element, with
        a warning); LU off -> EOPNOTSUPP; no outgoing FLB -> ENOENT; then for
        ``dev`` and every upstream bridge: frozen -> EINVAL; already outgoing:
        refcount 0 -> EINVAL (WARN), endpoint -> EBUSY, bridge -> refcount+1;
        new entry: ACS-quirk device -> EINVAL, table full -> ENOSPC (v6),
        block allocation errors (v7/v9).  An error undoes the elements below
        the failing one.
        """
        if self.abi != "v9" and dev.is_virtfn:
            raise KernelError(errno.EINVAL, f"{dev.name}: a Virtual Function cannot be "
                              "preserved")
        out = self._get_outgoing()
        done: list[PciDev] = []
        d: PciDev | None = dev
        while d is not None:
            try:
                self._preserve_one(out, d)
            except KernelError:
                for prev in done:
                    self._unpreserve_one(out, prev)
                raise
            done.append(d)
            d = d.bus.self_dev

    def _preserve_one(self, out: PciFlbOutgoing, d: PciDev) -> None:
        lu = d.lu
        if self.abi == "v9" and d.is_virtfn:
            self._warn(f"{d.name}: Virtual Functions cannot be preserved")
            raise KernelError(errno.EINVAL, f"{d.name}: a Virtual Function cannot be preserved")
        if lu.frozen:
            self._warn(f"{d.name}: Cannot preserve device after it was frozen for shutdown")
            raise KernelError(errno.EINVAL, f"{d.name}: frozen")
        if lu.outgoing is not None:
            ser = _read_dev(self.mem, lu.outgoing.pa)
            if ser.refcount == 0:
                self._warn(f"WARNING: {d.name}: outgoing slot has refcount 0")
                raise KernelError(errno.EINVAL, f"{d.name}: corrupted outgoing refcount")
            if d.subordinate is None:
                raise KernelError(errno.EBUSY, f"{d.name}: already preserved")
            _write_dev(self.mem, lu.outgoing.pa,
                       PciDevSer(ser.domain, ser.bdf, (ser.refcount + 1) & 0xFFFF))
            return
        if needs_acs_enable_quirk(d):
            self._warn(f"{d.name}: Cannot preserve device that requires an ACS quirk")
            raise KernelError(errno.EINVAL, f"{d.name}: needs a device-specific ACS quirk")
        slot = self._alloc_slot_v6(out) if self.abi == "v6" else self._alloc_slot_blockset(out)
        _write_dev(self.mem, slot, PciDevSer(d.domain, d.bdf, 1))
        nr_pa = self._nr_pa(out.ser_pa)
        _write_u32(self.mem, nr_pa, _read_u32(self.mem, nr_pa) + 1)
        if self.abi != "v6":
            self.mem.write_u64(out.ser_pa + _DEVICES_OFF[self.abi], out.blocks[0])
        lu.outgoing = SerSlot(slot)
        self._log("info", f"{d.name}: Device will be preserved across next Live Update")

    def _alloc_slot_v6(self, out: PciFlbOutgoing) -> int:
        """First refcount-0 slot scanning circularly from index ``nr_devices`` (ENOSPC)."""
        nr = _read_u32(self.mem, self._nr_pa(out.ser_pa))
        mx = out.max_nr_devices
        if nr == mx:
            raise KernelError(errno.ENOSPC, f"all {mx} pci_ser slots are in use")
        for i in range(mx):
            pa = out.slots[(nr + i) % mx]
            if not _read_dev(self.mem, pa).refcount:
                return pa
        raise KernelError(errno.ENOSPC, f"no free slot among {mx}")

    def _alloc_slot_blockset(self, out: PciFlbOutgoing) -> int:
        """First refcount-0 entry of the block set, else grow it by one entry."""
        mem = self.mem
        for pa in out.slots:
            if not _read_dev(mem, pa).refcount:
                return pa
        count = mem.read_u64(out.blocks[-1] + 8) if out.blocks else PCI_DEVS_PER_BLOCK
        if count >= PCI_DEVS_PER_BLOCK:
            if len(out.blocks) >= KHO_BLOCK_MAX:
                raise KernelError(errno.ENOSPC, f"pci_dev_ser block set has {KHO_BLOCK_MAX} "
                                  "blocks")
            blk = self.kernel.kho.alloc_preserve(KHO_BLOCK_SIZE)  # zeroed: {next 0, count 0}
            if out.blocks:
                mem.write_u64(out.blocks[-1], blk)
            out.blocks.append(blk)
            count = 0
        blk = out.blocks[-1]
        pa = blk + KhoBlockHeaderSer.SIZE + PciDevSer.SIZE * count
        mem.write_u64(blk + 8, count + 1)
        out.slots.append(pa)
        return pa

    def _unpreserve_one(self, out: PciFlbOutgoing, d: PciDev) -> bool:
        """One path element of unpreserve; False = stop the walk."""
        lu = d.lu
        if lu.frozen:
            self._log("warn", f"{d.name}: Cannot unpreserve device after it was frozen")
            return False
        if lu.outgoing is None:
            self._log("warn", f"{d.name}: Cannot unpreserve device that is not preserved")
            return False
        pa = lu.outgoing.pa
        ser = _read_dev(self.mem, pa)
        if ser.refcount == 0:
            self._warn(f"WARNING: {d.name}: outgoing slot has refcount 0")
            return False
        if ser.refcount > 1:
            _write_dev(self.mem, pa, PciDevSer(ser.domain, ser.bdf, ser.refcount - 1))
            return True
        nr_pa = self._nr_pa(out.ser_pa)
        _write_u32(self.mem, nr_pa, _read_u32(self.mem, nr_pa) - 1)
        self.mem.zero(pa, PciDevSer.SIZE)
        lu.outgoing = None
        self._log("info", f"{d.name}: Device will no longer be preserved across next Live "
                          "Update")
        return True

    def unpreserve(self, dev: PciDev) -> None:
        """Models ``pci_liveupdate_unpreserve()`` (spec pci.md §4.3): void.

        No outgoing FLB -> warning.  Walks ``dev`` and its upstream bridges,
        dropping one reference each (a slot reaching 0 is zeroed and
        ``nr_devices`` drops); stops at the first element that is frozen,
        not outgoing, or has refcount 0.
        """
        try:
            out = self._get_outgoing()
        except KernelError:
            self._log("warn", f"{dev.name}: Cannot unpreserve device without outgoing Live "
                              "Update state")
            return
        d: PciDev | None = dev
        while d is not None and self._unpreserve_one(out, d):
            d = d.bus.self_dev

    def finish(self, dev: PciDev) -> None:
        """Models ``pci_liveupdate_finish()`` (spec pci.md §4.4), called from a file
        handler's ``finish``.

        Takes an incoming FLB reference (none -> warning).  Walks ``dev`` and
        its upstream bridges: not incoming -> warning, stop; refcount 0 ->
        WARN, stop; else decrement the serialized slot; at 0 the device stops
        being incoming, ``nr_devices`` drops and (v6/v7) the reference taken at
        setup is dropped.  Finally drops the reference taken here.
        """
        inc = self._get_incoming()
        if inc is None:
            self._log("warn", f"{dev.name}: Cannot finish preserving device without incoming "
                              "FLB")
            return
        mem = self.mem
        d: PciDev | None = dev
        while d is not None:
            slot = d.lu.incoming
            if slot is None:
                self._log("warn", f"{d.name}: Cannot finish preserving an unpreserved device")
                break
            ser = _read_dev(mem, slot.pa)
            if ser.refcount == 0:
                self._warn(f"WARNING: {d.name}: Preserved device has a corrupted refcount!")
                break
            _write_dev(mem, slot.pa, PciDevSer(ser.domain, ser.bdf, ser.refcount - 1))
            if ser.refcount == 1:
                d.lu.incoming = None
                nr_pa = self._nr_pa(inc.ser_pa)
                _write_u32(mem, nr_pa, _read_u32(mem, nr_pa) - 1)
                self._log("info", f"{d.name}: Device is finished participating in Live "
                                  "Update")
                if self.abi != "v9":
                    self._put_incoming()
            d = d.bus.self_dev
        self._put_incoming()

    def is_incoming(self, dev: PciDev) -> bool:
        """Models ``pci_liveupdate_is_incoming()``: preserved by the previous kernel and
        not finished yet."""
        return dev.lu.incoming is not None

    # ================================================================== PCI core hooks
    def setup_device(self, dev: PciDev) -> None:
        """Models ``pci_liveupdate_setup_device()`` (first thing in ``pci_setup_device()``).

        Gets the incoming FLB (the first call retrieves it); a live slot for
        ``(domain, bdf)`` marks the device incoming and ``was_preserved``.
        v6/v7 keep the FLB reference until finish; v9 drops it at once.
        """
        inc = self._get_incoming()
        if inc is None:
            return
        pa = inc.slots.get(key(dev.domain, dev.bdf))
        if pa is None or not self._refcount(pa):
            self._put_incoming()
            return
        dev.lu.incoming = SerSlot(pa)
        dev.lu.was_preserved = True
        self._log("info", f"{dev.name}: Device was preserved by previous kernel across Live "
                          "Update")
        if self.abi == "v9":
            self._put_incoming()

    def cleanup_device(self, dev: PciDev) -> None:
        """Models ``pci_liveupdate_cleanup_device()`` (``pci_release_dev()`` and setup's
        error path), per the profile's ``pci_cleanup`` rule (spec pci.md §4.6, §5.7).

        v6: outgoing -> WARN + unpreserve; incoming -> WARN + finish.
        v7: outgoing -> WARN; incoming -> WARN + drop the setup reference (the
        slot stays pending).  v9: WARN only.
        """
        if dev.lu.outgoing is not None:
            self._warn(f"WARNING: {dev.name}: Destroying outgoing-preserved device!")
            if self.cleanup_rule == "v6":
                self.unpreserve(dev)
        if dev.lu.incoming is not None:
            self._warn(f"WARNING: {dev.name}: Destroying incoming-preserved device!")
            if self.cleanup_rule == "v6":
                self.finish(dev)
            elif self.cleanup_rule == "v7":
                self._put_incoming()

    def scan_bridge_begin(self, bus: PciBus, bridge_dev: PciDev, pass_: int) -> bool:
        """Models ``pci_liveupdate_scan_bridge_begin()`` (spec pci.md §5.1): inherit bus numbers?

        v6 rule: pass 1 repeats pass 0's decision; on pass 0 a bridge inherits
        when its parent bridge does, else when the incoming ``nr_devices`` is
        not 0 (global: every bridge inherits while anything is pending).
        v9 rule (``preserve_bus_numbers()``): the sticky ``had_incoming``.
        """
        if self.bus_rule == "v9":
            return self._had_incoming
        lu = bridge_dev.lu
        if pass_ == 1:
            return lu.inherit_buses
        parent = bus.self_dev
        if parent is not None and parent.lu.inherit_buses:
            lu.inherit_buses = True
            return True
        inc = self._get_incoming()
        if inc is None:
            lu.inherit_buses = False
            return False
        lu.inherit_buses = _read_u32(self.mem, self._nr_pa(inc.ser_pa)) != 0
        self._put_incoming()
        return lu.inherit_buses

    def scan_bridge_end(self, bridge_dev: PciDev, pass_: int) -> None:
        """Models ``pci_liveupdate_scan_bridge_end()``: pass 1 clears the decision so a
        later rescan re-evaluates it."""
        if pass_ == 1:
            bridge_dev.lu.inherit_buses = False

    def refuse_bus_numbers(self, bus: PciBus, dev: PciDev) -> bool:
        """Models the v9 ``refuse_bus_numbers()``: no bridge on ``bus`` gets numbers on
        pass 1 if a bridge there was incoming but has no child bus (it lost its
        configuration: its old range cannot be excluded)."""
        if self.bus_rule != "v9":
            return False
        return any(d.is_bridge and d.lu.was_preserved and d.subordinate is None
                   for d in bus.devices)

    def init_acs(self, dev: PciDev) -> None:
        """Models ``pci_liveupdate_init_acs()`` (spec pci.md §5.3): an incoming device with
        an ACS capability snapshots its ACS Control register."""
        if dev.lu.incoming is not None and dev.acs_cap:
            dev.lu.acs_ctrl = dev.hw.acs_ctrl

    def enable_acs(self, dev: PciDev) -> bool:
        """Models ``pci_liveupdate_enable_acs()``: a was-preserved device gets its
        snapshot written back instead of the normal policy, for the pci_dev's
        lifetime.  A device needing an ACS quirk WARNs and takes the normal path."""
        if not dev.lu.was_preserved:
            return False
        if needs_acs_enable_quirk(dev):
            self._warn(f"WARNING: {dev.name}: incoming device needs an ACS quirk; "
                       "using normal ACS setup")
            return False
        if not dev.acs_cap:
            return False
        dev.hw.acs_ctrl = dev.lu.acs_ctrl
        return True

    def configure_ari(self, bridge_dev: PciDev) -> bool:
        """Models the ARI hook of ``pci_configure_ari()`` (spec pci.md §5.4): an incoming
        bridge keeps the ARI Forwarding Enable it has in hardware (before ``pci=noari``)."""
        if bridge_dev.lu.incoming is None:
            return False
        bridge_dev.ari_enabled = bridge_dev.hw.devctl2_ari_fwd
        return True

    def freeze(self, dev: PciDev) -> None:
        """Models ``pci_liveupdate_freeze()``: first thing in ``pci_device_shutdown()``."""
        dev.lu.frozen = True

    def is_outgoing(self, dev: PciDev) -> bool:
        """Models ``pci_liveupdate_is_outgoing()`` (WARN_ONCE when not frozen yet)."""
        if not dev.lu.frozen:
            self.kernel.warn_once("pci", "pci-liveupdate-is-outgoing",
                                  f"liveupdate: WARNING: {dev.name}: outgoing status read "
                                  "before freeze")
        return dev.lu.outgoing is not None

    # ================================================================== accessors
    @property
    def had_incoming(self) -> bool:
        """The incoming lookup map was non-empty at retrieve (v9's sticky flag; tracked
        for every profile)."""
        return self._had_incoming

    @property
    def outgoing(self) -> PciFlbOutgoing | None:
        """The live outgoing FLB object, None when no PCI-linked file is preserved."""
        return self._out

    @property
    def incoming(self) -> PciFlbIncoming | None:
        """The incoming FLB object between retrieve and FLB finish."""
        return self._in

    def outgoing_slots(self) -> list[tuple[int, int, int]]:
        """Every outgoing slot ``(domain, bdf, refcount)`` in slot/chain order, holes
        included, read from memory."""
        if self._out is None:
            return []
        return [(d.domain, d.bdf, d.refcount)
                for d in (_read_dev(self.mem, pa) for pa in self._out.slots)]

    def outgoing_entries(self) -> list[tuple[int, int, int]]:
        """Outgoing ``(domain, bdf, refcount)`` with refcount > 0, read from memory."""
        return [e for e in self.outgoing_slots() if e[2]]

    def outgoing_nr_devices(self) -> int | None:
        """The outgoing ``pci_ser.nr_devices`` in memory (None: no outgoing pci_ser)."""
        if self._out is None:
            return None
        return _read_u32(self.mem, self._nr_pa(self._out.ser_pa))

    def outgoing_max_nr_devices(self) -> int | None:
        """v6: the slot capacity; v7/v9: entries currently in the block set."""
        if self._out is None:
            return None
        return self._out.max_nr_devices if self.abi == "v6" else len(self._out.slots)

    def incoming_entries(self) -> list[tuple[int, int, int]]:
        """Every handed-over live entry ``(domain, bdf, current refcount)``, read from
        memory (finished ones show refcount 0).  Empty before retrieve/after finish."""
        if self._in is None:
            return []
        return [(d.domain, d.bdf, d.refcount)
                for d in (_read_dev(self.mem, pa) for pa in self._in.slots.values())]

    def incoming_nr_devices(self) -> int | None:
        """The incoming ``pci_ser.nr_devices`` in memory (None before retrieve/after finish)."""
        if self._in is None:
            return None
        return _read_u32(self.mem, self._nr_pa(self._in.ser_pa))

    def pending_incoming(self) -> list[str]:
        """BDFs (``"0000:03:00.0"``) handed over and not finished (refcount > 0), sorted."""
        return sorted(fmt_bdf(d, b) for d, b, rc in self.incoming_entries() if rc)

    def incoming_ser_freed(self) -> bool:
        """True when the incoming ``pci_ser`` in use was freed by an earlier failed
        retrieve (use after free; whoever allocates the page next overwrites it)."""
        return self._in is not None and self._in.freed

    def incoming_ser_is_free(self) -> bool:
        """True when the incoming ``pci_ser`` in use is free in this kernel's page
        allocator (a retry after a failed retrieve reads freed memory)."""
        return self._in is not None and self.kernel.mm.is_free(self._in.ser_pa)

    def summary(self) -> dict[str, Any]:
        """Introspection for reports."""
        return {
            "abi": self.abi, "compatible": self.compatible,
            "outgoing": [(fmt_bdf(d, b), rc) for d, b, rc in self.outgoing_entries()],
            "outgoing_nr_devices": self.outgoing_nr_devices(),
            "incoming": [(fmt_bdf(d, b), rc) for d, b, rc in self.incoming_entries()],
            "incoming_nr_devices": self.incoming_nr_devices(),
            "had_incoming": self._had_incoming,
            "retrieve_attempts": self.retrieve_attempts,
            "incoming_ser_freed": self.incoming_ser_freed(),
        }
