"""PCI live-update invariants of spec pci.md §10 (the checker reads kernel and
hardware state; the BDF-identity invariant, §10.1, is PCI-1 in rules_core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from luosim.abi.pci import fmt_bdf
from luosim.check.invariants import CheckContext, invariant
from luosim.hw.pci import CMD_BME

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.pci.probe import PciDev


def _live(ctx: CheckContext) -> Kernel | None:
    k = ctx.kernel
    if k is None or not k.alive or not getattr(k, "booted", False) or not k._devices:
        return None
    return k


def _ancestors(dev: PciDev) -> list[PciDev]:
    out = []
    bridge = dev.bus.self_dev
    while bridge is not None:
        out.append(bridge)
        bridge = bridge.bus.self_dev
    return out


@invariant("PCI-2", "outgoing accounting: nr_devices counts live slots, endpoints hold 1, "
           "each bridge counts the preserved devices below it, ancestors are preserved",
           "pci.md §10.2, §4.2")
def outgoing_accounting(ctx: CheckContext) -> str | None:
    k = _live(ctx)
    if k is None or ctx.phase != "preserved":
        return None
    lu = k.pci_lu
    entries = lu.outgoing_entries()
    nr = lu.outgoing_nr_devices()
    if nr is None:
        return None
    if nr != len(entries):
        return f"outgoing nr_devices is {nr}, {len(entries)} slots are live"
    refs = {fmt_bdf(d, b): rc for d, b, rc in entries}
    direct = [dev for dev in k.pci.devices() if dev.lu.outgoing is not None
              and dev.subordinate is None]
    expected: dict[str, int] = {}
    for dev in direct:
        expected[dev.name] = expected.get(dev.name, 0) + 1
        for anc in _ancestors(dev):
            expected[anc.name] = expected.get(anc.name, 0) + 1
    for name, count in sorted(expected.items()):
        if name not in refs:
            return f"{name} has a preserved device below it but no outgoing slot"
        if refs[name] < count:
            return f"{name} refcount {refs[name]}, {count} preserved devices at or below it"
    for dev in direct:
        if refs.get(dev.name) != 1:
            return f"endpoint {dev.name} has refcount {refs.get(dev.name)}"
    for name in refs:
        if k.pci.find(name) is None:
            return f"outgoing slot {name} names no live device"
    return None


@invariant("PCI-3", "incoming accounting: nr_devices counts pending slots, a device is incoming "
           "iff its slot is pending, no slot is used after its pci_ser was freed",
           "pci.md §10.3, §10.9, §1 (retry after a failed retrieve)")
def incoming_accounting(ctx: CheckContext) -> str | None:
    k = _live(ctx)
    if k is None or ctx.phase not in ("after-kexec", "finished"):
        return None
    lu = k.pci_lu
    if lu.incoming_ser_freed():
        where = "now reused" if not lu.incoming_ser_is_free() else "in the free pool"
        return f"incoming pci_ser is used after a failed retrieve freed it ({where})"
    nr = lu.incoming_nr_devices()
    if nr is None:
        return None
    pending = set(lu.pending_incoming())
    if nr != len(pending):
        return f"incoming nr_devices is {nr}, {len(pending)} slots are pending"
    for dev in k.pci.devices():
        if lu.is_incoming(dev) and dev.name not in pending:
            return f"{dev.name} is marked incoming but its slot is finished"
    return None


@invariant("PCI-5", "at kexec BME stays set on preserved devices' bridges and is cleared on "
           "every device that is not preserved", "pci.md §10.5, §5.8")
def bus_mastering_at_kexec(ctx: CheckContext) -> str | None:
    snap = ctx.extra.get("bme_at_jump")
    if not snap or ctx.extra.get("bme_checked"):
        return None
    ctx.extra["bme_checked"] = True
    for name, (outgoing, bme, is_bridge) in sorted(snap.items()):
        if outgoing and is_bridge and not bme:
            return f"bridge {name} above a preserved device lost Bus Master Enable at kexec"
        if not outgoing and bme:
            return f"{name} is not preserved but kept Bus Master Enable through kexec"
    return None


@invariant("PCI-6", "ACS Control of a preserved device and its bridges is the same after kexec",
           "pci.md §10.6, §5.3")
def acs_inherited(ctx: CheckContext) -> str | None:
    k = _live(ctx)
    before: dict[str, int] = ctx.extra.get("acs_before", {})
    if k is None or not before or ctx.phase not in ("after-kexec", "finished"):
        return None
    for name, value in sorted(before.items()):
        dev = k.pci.find_hw(name)
        if dev is None or not dev.lu.was_preserved:
            continue
        if dev.hw.acs_ctrl != value:
            return f"{name} ACS Control {value:#06x} became {dev.hw.acs_ctrl:#06x}"
    return None


@invariant("VFIO-8", "until retrieved, a preserved device cannot be opened except through "
           "RETRIEVE_FD (the PCI core knows it is incoming)", "pci.md §10.8, §6.2")
def exclusivity(ctx: CheckContext) -> str | None:
    k = _live(ctx)
    for name in ctx.extra.get("foreign_bound", []):
        return f"a DMA-API driver bound preserved {name} before RETRIEVE_FD"
    if k is None or ctx.phase != "after-kexec" or ctx.step != "boot after kexec":
        return None
    for name in sorted(ctx.preserved_bdfs):
        dev = k.pci.find_hw(name)
        if dev is not None and not k.pci_lu.is_incoming(dev):
            return (f"preserved {name} at {dev.name} is not incoming: a cdev or group open "
                    "would succeed, or another driver could bind")
    return None


def snapshot_at_jump(ctx: CheckContext, old: Kernel) -> None:
    """Record what PCI-5 and PCI-6 compare: hardware state right after shutdown."""
    if not old._devices:
        return
    bme: dict[str, tuple[bool, bool, bool]] = {}
    acs: dict[str, int] = {}
    for dev in old.pci.devices():
        outgoing = dev.lu.outgoing is not None
        bme[dev.hw.hw_id] = (outgoing, bool(dev.hw.command & CMD_BME),
                             dev.subordinate is not None)
        if outgoing:
            acs[dev.hw.hw_id] = dev.hw.acs_ctrl
    # endpoints' BME is vfio's business (reset at freeze): only bridges and
    # non-preserved devices are the PCI core's (§5.8)
    ctx.extra["bme_at_jump"] = {n: v for n, v in bme.items() if v[2] or not v[0]}
    ctx.extra["acs_before"] = acs
