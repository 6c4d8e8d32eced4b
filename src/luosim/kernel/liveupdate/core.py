"""Live Update Orchestrator core: models kernel/liveupdate/luo_core.c.

API for other subsystems (``kernel.liveupdate`` is a :class:`LuoCore`)::

    from luosim.kernel.liveupdate.file import FileHandler, FileOpArgs
    from luosim.kernel.liveupdate.flb import Flb, FlbOpArgs

    lu = kernel.liveupdate
    lu.register_file_handler(fh)        # EOPNOTSUPP / EINVAL / EEXIST
    lu.unregister_file_handler(fh)      # void; unlinks fh's FLBs first
    lu.register_flb(fh, flb)            # EOPNOTSUPP / EINVAL / EEXIST / ENOSPC (64th FLB)
    lu.unregister_flb(fh, flb)          # void
    obj = lu.flb_get_outgoing(flb)      # live obj or None (no reference taken); EOPNOTSUPP
    obj = lu.flb_get_incoming(flb)      # +1 ref; EOPNOTSUPP / ENODATA / ENOENT / retrieve error
    lu.flb_put_incoming(flb)            # -1 ref; the last one runs finish (retrieving first)
    lu.enabled, lu.liveupdate_number_in, lu.liveupdate_number_out

``flb_get_incoming`` works for an FLB object that is not registered yet (the
PCI core calls it during enumeration): it is found by compatible in the
handed-over FLB array.  Handler and FLB ops raise ``KernelError`` to fail.

Enablement (model choice): spec luo.md §1.1 says ``liveupdate=<bool>``
defaults to off.  To keep the public API simple (DESIGN.md boots with
``cmdline=""``), luosim treats live update as **on unless the command line
says ``liveupdate=off``** (or another false kstrtobool value: 0, n, no,
off).  ``kho=off`` disables LUO too.  The incoming hand-over is parsed even
with ``liveupdate=off`` as long as KHO is on, and a malformed one panics
(``luo_restore_fail()``).

Profiles: ``luo-v1`` profiles (v6, v7) write the P1 FDT ABI (``luo-v1``,
``luo-session-v2``, ``luo-flb-v1``) with P2 semantics (no quiesce, double
preservation EBUSY, remembered file retrieve failure, get_id) plus the
incoming FLB refcount the PCI series depends on, the stable fix that checks
a session's kind per ioctl, and ``kho_finalize()`` at reboot.  The
``luo-v5`` profile (v9) is P3/P4: the ``luo_ser`` struct ABI with KHO block
chains, session name validation, GET_NAME, ``memfd-v2`` and a remembered FLB
retrieve failure.  ``flb_get_outgoing`` keeps the P0-P3 form in every
profile (no reference, None when nothing is preserved).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, NoReturn

from luosim.abi.errors import DecodeError
from luosim.abi.luo import (
    LUO_FDT_SIZE,
    LUO_FLB_BLOCK_SIZE,
    LUO_KHO_ENTRY_NAME,
    LUO_SESSION_BLOCK_SIZE,
    LuoSer,
    decode_flb_block,
    decode_luo_fdt,
    decode_luo_v5,
    encode_flb_block,
    encode_luo_fdt,
    encode_luo_v5,
)
from luosim.errors import KernelError
from luosim.faults import point
from luosim.faults.mutator import corrupt_luo_blob, corrupt_luo_session_count
from luosim.hw.memory import MemoryAccessError
from luosim.kernel.liveupdate.file import FileHandler, FileManager
from luosim.kernel.liveupdate.flb import Flb, FlbManager
from luosim.kernel.liveupdate.session import SessionManager
from luosim.kernel.vfs import check_alive

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.liveupdate.uapi import LiveupdateDevice

FP_HANDOVER = point(
    "luo.handover", ("corrupt:compatible", "corrupt:session-count", "corrupt:missing-flb-node"),
    "the LUO hand-over is corrupted in memory after reboot serialization; the next kernel "
    "sees it: compatible → panic (luo_restore_fail); session-count → luo-v5 panic (block "
    "chain check at early boot), luo-v1 EIO at first open (P0/P1 read the session block "
    "late); missing-flb-node → luo-v1 panic (no luo-flb node), luo-v5 flbs_pa=0 (FLBs "
    "answer ENODATA)")

_FALSE = ("0", "n", "no", "off", "false", "N", "NO", "OFF", "False", "FALSE")


def _cmdline_enabled(kernel: Kernel) -> bool:
    val = kernel.cmdline_value("liveupdate")
    if val is None:
        return True
    return val.strip() not in _FALSE


class LuoCore:
    """One kernel's LUO: state, boot hooks, reboot hook, device, handler/FLB entry points."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.abi = kernel.profile.luo_abi
        if self.abi not in ("luo-v1", "luo-v5"):
            raise ValueError(f"unknown LUO ABI {self.abi!r}")
        self.v5 = self.abi == "luo-v5"
        # CONFIG_LIVEUPDATE=n: not built (luosim.kernel.config)
        self.enabled = _cmdline_enabled(kernel) and kernel.configured("CONFIG_LIVEUPDATE")
        self.liveupdate_number_in = 0
        self.liveupdate_number_out = 0
        self.files = FileManager(self)
        self.flbs = FlbManager(self)
        self.sessions = SessionManager(self)
        self.device_registered = False
        self.device_in_use = False
        self.deserialized = False
        self.deserialize_error: KernelError | None = None
        self.in_sessions_pa: int | None = None  # None: no incoming state
        self.out_blob_pa = 0
        self.out_flb_pa = 0
        self.serialized = False

    # ------------------------------------------------------------------ boot
    def _restore_fail(self, message: str) -> NoReturn:
        """Models luo_restore_fail() (luo_internal.h): panic, LUO disabled."""
        self.enabled = False
        self.kernel.panic(f"luo: {message}")

    def early_init(self) -> None:
        """Models liveupdate_early_init(): parse the incoming hand-over (spec luo.md §1.1).

        KHO off → LUO off.  No "LUO" KHO entry → cold-boot semantics.  Any
        other retrieve error or a malformed/incompatible blob → panic, even
        with ``liveupdate=off``.  Sessions and files are not read yet.
        """
        k = self.kernel
        if not k.kho.enabled:
            self.enabled = False
            k.printk("info", "luo", "KHO is disabled: live update disabled")
            return
        try:
            pa = k.kho.retrieve_subtree(LUO_KHO_ENTRY_NAME)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return
            self._restore_fail(f"failed to retrieve the LUO hand-over: {exc}")
        try:
            if self.v5:
                self._parse_v5(pa)
            else:
                self._parse_v1(pa)
        except (DecodeError, MemoryAccessError) as exc:
            self._restore_fail(f"incoming hand-over is invalid: {exc}")
        k.printk("info", "luo", f"incoming live update #{self.liveupdate_number_in}")

    def _claim(self, pa: int) -> None:
        """Restore and free a KHO block whose content has been copied out."""
        kho = self.kernel.kho
        if kho.restore_folio(pa) is not None:
            self.kernel.mm.free_pages(pa)

    def _parse_v1(self, pa: int) -> None:
        mem = self.kernel.machine.memory
        fdt = decode_luo_fdt(mem.read(pa, LUO_FDT_SIZE), require_flb=True)
        self.liveupdate_number_in = fdt.liveupdate_num
        self.in_sessions_pa = fdt.session_header_pa
        self._claim(pa)
        if fdt.flb_header_pa is not None:
            self._setup_incoming_flbs(fdt.flb_header_pa)

    def _parse_v5(self, pa: int) -> None:
        mem = self.kernel.machine.memory
        ser = decode_luo_v5(mem.read(pa, LuoSer.SIZE))
        self.sessions.validate_incoming_chain(ser.sessions_pa)
        self.liveupdate_number_in = ser.liveupdate_num
        self.in_sessions_pa = ser.sessions_pa
        self._claim(pa)
        if ser.flbs_pa:
            self._setup_incoming_flbs(ser.flbs_pa)

    def _setup_incoming_flbs(self, flb_pa: int) -> None:
        """Models luo_flb_setup_incoming(): copy the FLB records, claim the page.

        Part of the early incoming parse: a block that cannot be claimed or
        decoded ends in luo_restore_fail() like every other parse error (spec
        luo.md §1.1, §6).  Carrying on would make every FLB owner see ENODATA,
        "nothing preserved", while their hardware state is still live.
        """
        k = self.kernel
        if k.kho.restore_folio(flb_pa) is None:
            self._restore_fail(f"incoming FLB block {flb_pa:#x} was not preserved")
        try:
            self.flbs.incoming_records = decode_flb_block(
                k.machine.memory.read(flb_pa, LUO_FLB_BLOCK_SIZE))
        except DecodeError as exc:
            self._restore_fail(f"incoming FLB block is invalid: {exc}")
        k.mm.free_pages(flb_pa)

    def late_init(self) -> None:
        """Models luo_late_startup() + the misc device registration (spec luo.md §1.1).

        Builds the outgoing state (luo-v1: FDT page, 16-page session block,
        FLB page; luo-v5: ``luo_ser`` page and FLB page), all KHO-preserved,
        with liveupdate_num_out = in + 1, and registers it as KHO entry
        "LUO".  Failure disables LUO (no panic).
        """
        k = self.kernel
        if not self.enabled:
            return
        kho = k.kho
        allocated: list[int] = []
        try:
            self.out_blob_pa = kho.alloc_preserve(LUO_FDT_SIZE)
            allocated.append(self.out_blob_pa)
            self.out_flb_pa = kho.alloc_preserve(LUO_FLB_BLOCK_SIZE)
            allocated.append(self.out_flb_pa)
            if not self.v5:
                self.sessions.block_pa = kho.alloc_preserve(LUO_SESSION_BLOCK_SIZE)
                allocated.append(self.sessions.block_pa)
            # luo_fdt_setup(): `const u64 ln = luo_global.liveupdate_num + 1` wraps at 2^64
            # (torvalds/linux cab056f2aae7, kernel/liveupdate/luo_core.c)
            self.liveupdate_number_out = (self.liveupdate_number_in + 1) & ((1 << 64) - 1)
            k.machine.memory.write(self.out_flb_pa, encode_flb_block([]))
            self._write_blob(0)
            # luo-v5: kho_add_subtree(..., luo_ser, sizeof(*luo_ser)); luo-v1: the FDT's size
            kho.add_subtree(LUO_KHO_ENTRY_NAME, self.out_blob_pa,
                            LuoSer.SIZE if self.v5 else None)
        except KernelError as exc:
            for pa in reversed(allocated):
                kho.unpreserve_free(pa)
            self.enabled = False
            self.liveupdate_number_out = 0
            k.printk("err", "luo", f"luo_late_startup failed: {exc}; live update disabled")
            return
        self.device_registered = True
        k.printk("info", "luo", f"live update enabled ({self.abi}), outgoing number "
                 f"{self.liveupdate_number_out}")

    def _write_blob(self, sessions_pa: int) -> None:
        mem = self.kernel.machine.memory
        if self.v5:
            blob = encode_luo_v5(self.liveupdate_number_out, sessions_pa, self.out_flb_pa)
        else:
            blob = encode_luo_fdt(self.liveupdate_number_out, self.sessions.block_pa,
                                  self.out_flb_pa)
            blob = blob.ljust(LUO_FDT_SIZE, b"\0")
        mem.write(self.out_blob_pa, blob)

    # ------------------------------------------------------------------ reboot
    def reboot(self) -> None:
        """Models liveupdate_reboot() (spec luo.md §1.2), called by kernel_kexec().

        Session serialization (freeze with rollback; its error fails the
        reboot and this kernel keeps running), FLB serialization, and for
        luo-v1 profiles ``kho_finalize()``.  Then the ``luo.handover`` fault
        point may corrupt what the next kernel will read.
        """
        check_alive(self.kernel)
        if not self.enabled:
            return
        k = self.kernel
        sessions_pa = self.sessions.serialize()
        recs = self.flbs.serialize()
        k.machine.memory.write(self.out_flb_pa, encode_flb_block(recs))
        self._write_blob(sessions_pa)
        effect = k.machine.faults.hit(FP_HANDOVER, "LUO hand-over")
        # corrupt:* effects edit the written hand-over in memory (faults/mutator.py)
        if effect in ("corrupt:compatible", "corrupt:missing-flb-node"):
            corrupt_luo_blob(k.machine.memory, self.out_blob_pa, effect)
        elif effect == "corrupt:session-count":
            mem = k.machine.memory
            if self.v5 and not sessions_pa:
                self._write_blob(self.out_blob_pa)  # points at a page that is no block
            else:
                corrupt_luo_session_count(mem, sessions_pa if self.v5 else
                                          self.sessions.block_pa, self.v5)
        if not self.v5:
            k.kho.finalize()
        self.serialized = True
        k.printk("info", "luo", f"serialized {len(self.sessions.outgoing)} sessions, "
                 f"{len(recs)} FLBs")

    # ------------------------------------------------------------------ device
    def open_device(self) -> LiveupdateDevice:
        """Models luo_open() of /dev/liveupdate (spec luo.md §2.1).

        ENOENT when the device does not exist (LUO disabled); EBUSY when it
        is already open; the first open deserializes the incoming sessions
        once, and a failure is cached: that and every later open get EIO.
        """
        from luosim.kernel.liveupdate.uapi import LiveupdateDevice

        check_alive(self.kernel)
        if not self.enabled or not self.device_registered:
            raise KernelError(errno.ENOENT, "/dev/liveupdate does not exist")
        if self.device_in_use:
            raise KernelError(errno.EBUSY, "/dev/liveupdate is already open")
        self.device_in_use = True
        if not self.deserialized:
            self.deserialized = True
            try:
                if self.in_sessions_pa is not None:
                    self.sessions.deserialize(self.in_sessions_pa)
            except KernelError as exc:
                self.deserialize_error = exc
                self.kernel.printk("err", "luo", f"failed to deserialize sessions: {exc}")
        if self.deserialize_error is not None:
            self.device_in_use = False
            raise KernelError(errno.EIO, f"session deserialization failed: "
                              f"{self.deserialize_error}")
        try:
            return LiveupdateDevice(self)
        except KernelError:
            self.device_in_use = False
            raise

    # ------------------------------------------------------------------ subsystem API
    def register_file_handler(self, fh: FileHandler) -> None:
        """liveupdate_register_file_handler(): EOPNOTSUPP / EINVAL / EEXIST."""
        self.files.register(fh)

    def unregister_file_handler(self, fh: FileHandler) -> None:
        """liveupdate_unregister_file_handler() (void; unlinks the handler's FLBs)."""
        self.files.unregister(fh)

    def register_flb(self, fh: FileHandler, flb: Flb) -> None:
        """liveupdate_register_flb(): EOPNOTSUPP / EINVAL / EEXIST / ENOSPC."""
        self.flbs.register(fh, flb)

    def unregister_flb(self, fh: FileHandler, flb: Flb) -> None:
        """liveupdate_unregister_flb() (void)."""
        self.flbs.unregister(fh, flb)

    def flb_get_outgoing(self, flb: Flb) -> Any:
        """liveupdate_flb_get_outgoing(): the live obj or None; no reference taken."""
        return self.flbs.get_outgoing(flb)

    def flb_get_incoming(self, flb: Flb) -> Any:
        """liveupdate_flb_get_incoming(): obj with +1 reference (spec luo.md §4.4)."""
        return self.flbs.get_incoming(flb)

    def flb_put_incoming(self, flb: Flb) -> None:
        """liveupdate_flb_put_incoming(): -1 reference; the last runs finish."""
        self.flbs.put_incoming(flb)

    # ------------------------------------------------------------------ introspection
    @property
    def is_incoming(self) -> bool:
        """Whether this kernel received LUO state from a previous kernel."""
        return self.in_sessions_pa is not None

    def summary(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled, "abi": self.abi,
            "liveupdate_number_in": self.liveupdate_number_in,
            "liveupdate_number_out": self.liveupdate_number_out,
            "outgoing": [s.name.decode("utf-8", "replace") for s in self.sessions.outgoing],
            "incoming": [s.name.decode("utf-8", "replace") for s in self.sessions.incoming],
            "handlers": [h.compatible for h in self.files.handlers],
            "flbs": [f.compatible for f in self.flbs.registered],
        }
