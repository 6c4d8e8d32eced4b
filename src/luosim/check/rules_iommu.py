"""IOMMU invariant of spec pci.md §10.7, read from the VT-d hardware state.

At hand-over only preserved RequesterIDs may have context entries; after the
kexec translation never turns off on a unit that had them, every preserved
device keeps its page-table root and domain ID, and no other device is given a
preserved domain ID.
"""

from __future__ import annotations

from typing import Any

from luosim.abi.pci import parse_bdf
from luosim.check.invariants import CheckContext, invariant
from luosim.hw.iommu import CONTEXT_ENTRY_SIZE, NR_DEVFNS, ContextEntry
from luosim.hw.memory import PAGE_SIZE

Entries = dict[tuple[int, int], tuple[int, int]]  # (segment, RID) -> (pgtable, DID)
_CACHE_LIMIT = 256  # distinct table pages remembered per run


def _present_entries(ctx: CheckContext, iommu: Any) -> Entries:
    """Every present context entry of every unit with a root table (the
    ``IommuHardware.context_entries`` walk), decoded once per distinct table
    contents.

    The invariant runs after every step while the tables rarely change; the
    cache is keyed by the bytes of each root and context-table page, not by a
    write counter, so a DMA write, scrub or corruption that lands on a table
    page is seen exactly like a driver's write.
    """
    cache: dict[bytes, Any] = ctx.extra.setdefault("iommu_table_cache", {})
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    mem = iommu.memory
    out: Entries = {}
    for unit in iommu.units:
        if not unit.root_table_set:
            continue
        root = unit.rtaddr
        if root % PAGE_SIZE or root + PAGE_SIZE > mem.size:
            continue  # context_tables() lists none for a root table outside RAM
        raw_root = b"R" + mem.read(root, PAGE_SIZE)
        tables = cache.get(raw_root)
        if tables is None:
            tables = cache[raw_root] = tuple(iommu.context_tables(unit).items())
        for bus, ct in tables:
            raw = b"C" + mem.read(ct, PAGE_SIZE)
            decoded = cache.get(raw)
            if decoded is None:
                decoded = cache[raw] = tuple(_decode_context_table(raw[1:]))
            for devfn, pgtable, did in decoded:
                out[(unit.segment, bus << 8 | devfn)] = (pgtable, did)
    return out


def _decode_context_table(raw: bytes) -> list[tuple[int, int, int]]:
    """(devfn, pgtable, DID) of each present entry of one context-table page."""
    found = []
    for devfn in range(NR_DEVFNS):
        off = devfn * CONTEXT_ENTRY_SIZE
        e = ContextEntry.decode(raw[off:off + CONTEXT_ENTRY_SIZE])
        if e.present:
            found.append((devfn, e.pgtable, e.domain_id))
    return found


def _preserved_rids(ctx: CheckContext) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    for name, bdf in ctx.preserved_bdfs.items():
        seg, rid = parse_bdf(bdf)
        out[(seg, rid)] = name
    return out


def snapshot_iommu_at_jump(ctx: CheckContext) -> None:
    """Record every present context entry right after the old kernel shut down."""
    iommu = getattr(ctx.machine, "iommu", None)
    if iommu is None:
        return
    enabled = {unit.reg_base: unit.translation_enabled for unit in iommu.units}
    entries = _present_entries(ctx, iommu)
    ctx.extra["iommu_at_jump"] = {"entries": entries, "enabled": enabled,
                                  "time": ctx.machine.clock.now_ns}
    ctx.extra["iommu_jump_checked"] = False  # once per jump (consecutive updates)


def _taken_over(k: Any, preserved: dict[tuple[int, int], str]) -> set[str]:
    """Preserved devices that a retrieved iommufd has taken over (phase 2): no
    longer held by the preserved owner, now owned by an iommufd."""
    from luosim.kernel.iommu.iommufd import IommufdFile
    out: set[str] = set()
    for (seg, rid), name in preserved.items():
        dev = k.iommu.devices.get((seg, rid)) if getattr(k, "_devices", False) else None
        if dev is not None and dev.restored_from is None \
                and isinstance(dev.group.owner, IommufdFile) and dev.group.owner.retrieved:
            out.add(name)
    return out


@invariant("IOMMU-7", "at hand-over only preserved RequesterIDs have context entries; after "
           "kexec translation stays on and each preserved device keeps its page-table root "
           "and domain ID, which no other device gets", "pci.md §10.7, §7.3, §7.4")
def iommu_handover(ctx: CheckContext) -> str | None:
    snap: dict[str, Any] | None = ctx.extra.get("iommu_at_jump")
    iommu = getattr(ctx.machine, "iommu", None)
    if snap is None or iommu is None:
        return None
    preserved = _preserved_rids(ctx)
    entries: dict[tuple[int, int], tuple[int, int]] = snap["entries"]
    if not ctx.extra.get("iommu_jump_checked"):
        ctx.extra["iommu_jump_checked"] = True
        for (seg, rid), _e in sorted(entries.items()):
            if (seg, rid) not in preserved:
                return (f"context entry for {seg:04x}:{rid >> 8:02x}:{(rid >> 3) & 31:02x}."
                        f"{rid & 7} survives the hand-over but no preserved device has it")
    k = ctx.kernel
    if k is None or not getattr(k, "booted", False) or ctx.phase not in ("after-kexec",
                                                                          "finished"):
        return None
    for unit in iommu.units:
        had_preserved = any(seg == unit.segment for seg, _rid in entries)
        if not (had_preserved and snap["enabled"].get(unit.reg_base)):
            continue
        off = [t for t, on in unit.te_history if t >= snap["time"] and not on]
        if off:
            return f"unit {unit.reg_base:#x} turned translation off at {off[0]} ns after kexec"
    now = _present_entries(ctx, iommu)
    # devices whose retrieved iommufd took them over (IOMMU phase 2) may be moved
    # to a new HWPT by their owner; their preserved DID may then be reused
    rebound = _taken_over(k, preserved)
    preserved_dids = {(seg, entries[(seg, rid)][1]) for (seg, rid), name in preserved.items()
                      if (seg, rid) in entries and name not in rebound}
    for key, name in sorted(preserved.items()):
        if key in entries and name not in rebound and now.get(key) != entries[key]:
            return (f"{name}: context entry {entries[key]} (page-table root, DID) became "
                    f"{now.get(key)} after kexec")
    for (seg, rid), (_pt, did) in sorted(now.items()):
        if (seg, rid) not in preserved and (seg, did) in preserved_dids:
            return f"RequesterID {rid:#06x} was given preserved domain ID {did}"
    return None
