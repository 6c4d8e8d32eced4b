"""LUO, KHO, BDF-identity and DMA invariants."""

from __future__ import annotations

import itertools

from luosim.check.invariants import CheckContext, invariant
from luosim.hw.memory import PAGE_SHIFT


@invariant("KHO-1", "preserved guest RAM survives the jump bit for bit and comes back as the "
           "same physical folios", "kho.md Memory API; luo.md §5.3")
def preserved_bytes_intact(ctx: CheckContext) -> str | None:
    for vm, problem in sorted(ctx.ram_problems.items()):
        return f"guest RAM of {vm}: {problem}"
    return None


# owners whose preserved memory stays claimed by design: the incoming KHO root
# FDT (kept for debugfs kho/in) always; the rest only while a session that
# holds such an object is deliberately left unfinished (IOMMU phase 1)
ALWAYS_PENDING = ("kho", "mm.memblock")  # + the memblock FDT, left reserved by design
PENDING_BY_KIND = {
    "iommufd": ("iommu", "liveupdate"),
    "vfio": ("vfio", "pci", "liveupdate"),
    # a retrieved memfd claimed its folios at retrieve: only LUO's records wait,
    # and for a hugetlb memfd the hugetlb-v1 FLB record (freed when the FLB is
    # retrieved, i.e. at the last FINISH of its files)
    "memfd": ("liveupdate", "mm.hugetlb"),
}


@invariant("KHO-2", "no preserved memory is leaked once every session is finished",
           "kho.md Memory API (incoming); luo.md §3.5")
def no_leak_after_finish(ctx: CheckContext) -> str | None:
    k = ctx.kernel
    if ctx.phase != "finished" or k is None or not k.alive:
        return None
    owners: dict[tuple[int, int], str] = ctx.extra.get("owners", {})
    allowed = ALWAYS_PENDING + tuple(
        o for kind in ctx.extra.get("unfinished_kinds", ()) for o in PENDING_BY_KIND[kind])
    leaked: dict[str, int] = {}
    for pa, order in k.kho.unclaimed():
        owner = owners.get((pa >> PAGE_SHIFT, order), "?")
        if not owner.startswith(allowed):
            leaked[owner] = leaked.get(owner, 0) + (1 << order)
    if leaked:
        what = ", ".join(f"{n} pages of {o}" for o, n in sorted(leaked.items()))
        return f"preserved memory never restored after FINISH: {what}"
    return None


@invariant("LUO-1", "a token is retrievable only while its session is retrieved and unfinished",
           "luo.md §7 (model-level invariants), §2.4 RETRIEVE_FD/FINISH")
def tokens_once(ctx: CheckContext) -> str | None:
    for (session, token), n in sorted(ctx.retrieved_tokens.items()):
        if n < 0:
            return f"token {token:#x} of session {session!r} retrievable after FINISH"
    # the probe runs only where sessions were finished; say so when it did not
    return None
    return None


@invariant("LUO-2", "liveupdate-number rises by one per live update",
           "luo.md §1.3 (liveupdate-number: out = in + 1)")
def liveupdate_number_monotonic(ctx: CheckContext) -> str | None:
    nums = ctx.liveupdate_numbers
    for a, b in itertools.pairwise(nums):
        if b != a + 1:
            return f"liveupdate-number went {a} -> {b}"
    return None


@invariant("PCI-1", "no preserved device is enumerated at another segment:bus:dev.fn, and no "
           "other device takes a preserved BDF", "pci.md §10.1, §5.2")
def bdf_identity(ctx: CheckContext) -> str | None:
    k = ctx.kernel
    if ctx.phase not in ("after-kexec", "finished") or k is None or not k.booted:
        return None
    for name, bdf in sorted(ctx.preserved_bdfs.items()):
        dev = k.pci.find_hw(name)
        if dev is not None and dev.name != bdf:
            return f"preserved device {name} was {bdf}, now {dev.name}"
        squatter = k.pci.find(bdf)
        if squatter is not None and squatter.hw.hw_id != name:
            return f"{squatter.hw.hw_id} now sits at {bdf}, the BDF preserved for {name}"
    return None


@invariant("DMA-1", "every DMA write of a preserved device lands in its own VM's memory",
           "pci.md §7.5, §10.7 (RequesterID-keyed translation); DESIGN.md outcomes")
def dma_lands_in_owner(ctx: CheckContext) -> str | None:
    dma = getattr(ctx.machine, "dma", None)
    if dma is None:
        return None
    records = dma.records
    for rec in records[ctx.dma_checked:]:
        vm = ctx.device_vm.get(rec.hw_id)
        if vm is None or rec.pa is None:
            continue
        pfns = ctx.ram_pfns.get(vm)
        if pfns is None or (rec.pa >> PAGE_SHIFT) not in pfns:
            owner = next((v for v, p in ctx.ram_pfns.items() if (rec.pa >> PAGE_SHIFT) in p),
                         None)
            where = f"{owner}'s RAM" if owner else "memory outside any VM"
            ctx.dma_checked = len(records)
            return (f"{rec.hw_id} (rid {rec.rid:#06x}) wrote iova {rec.iova:#x} -> pa "
                    f"{rec.pa:#x} in {where} [{rec.outcome}]")
    ctx.dma_checked = len(records)
    return None
