"""Preflight: will kernel FROM's hand-over be read by kernel TO, layer by layer?

Answers, without booting anything, what ``luosim matrix`` finds by running:
per hand-over layer (the rows of :data:`luosim.kernel.profiles.LAYERS`) what
the old kernel writes, what the new one accepts, and what happens to the
workload's preserved objects: read, lost (the new kernel does not find or
does not understand them), refused (the old kernel cannot preserve them, so
the update stops before kexec) or panic.  The rules are the kernel's:

* KHO root: ``kho_populate()`` checks the root compatible with
  ``fdt_node_check_compatible()``; any other version means "not a KHO boot",
  so every preserved page is lost (spec kho.md "Corrections").
* LUO: ``luo_early_startup()`` -> ``luo_restore_fail()`` panics on another
  LUO ABI (luo.md §1.1).
* memfd: a file record whose handler compatible is not registered fails
  session deserialization (luo.md §3.6): the agent's retrieve gets EIO and
  the run ends refused.
* PCI FLB: another compatible is ENOENT -> no device is incoming and bus
  numbers are not inherited; the same compatible with another layout fails
  to decode -> the ``pci.retrieve_failure`` policy (pci.md §3.1, §9).
* vfio / iommufd / IOMMU: a build without the handler cannot preserve (ENOENT
  at PRESERVE_FD: refused) and cannot take over (devices and IOMMU tables
  re-initialised under running DMA: lost).
* kexec-metadata and memblock never stop an update (the kernel warns).

The overall verdict follows the order things happen in a run: refused
before kexec; then a lost KHO root; then a LUO panic; then a device-layer
panic; then anything lost in a layer the workload uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from luosim.kernel.profiles import LAYERS, Profile

#: layers the runner's agent preserves objects in, by workload shape
DEVICE_LAYERS = ("pci", "vfio", "iommu", "iommufd")


@dataclass(frozen=True)
class LayerVerdict:
    """One layer of one (old, new) pair."""

    layer: str
    old: str | None  # version the old kernel writes (None: it has no such code)
    new: str | None  # version the new kernel accepts
    status: str  # ok | lost | refused | panic | unused
    detail: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The preflight answer for one pair: per layer, and the expected run outcome."""

    old: str
    new: str
    layers: list[LayerVerdict]
    outcome: str  # ok | refused | panic | unsafe, as ``luosim matrix`` would report
    why: str

    def as_json(self) -> dict[str, Any]:
        return {"from": self.old, "to": self.new, "outcome": self.outcome, "why": self.why,
                "layers": [lv.as_json() for lv in self.layers]}


def uses_of(scenario: Any) -> frozenset[str]:
    """The layers a scenario's update puts objects in (``uses`` for :func:`preflight`)."""
    vms = scenario.workload.vms
    mode = scenario.update.preserve
    if mode == "none" or not vms:
        return frozenset()
    used = {"kho", "luo", "memfd"}
    if mode == "all" and any(vm.devices for vm in vms):
        used.update(DEVICE_LAYERS)
    return frozenset(used)


def _wire(p: Profile, layer: str) -> str | None:
    return p.pci_compat if layer == "pci" and p.layer("pci") else p.layer(layer)


def _kho(old: Profile, new: Profile) -> LayerVerdict:
    if old.kho_abi == new.kho_abi:
        extra = " with blob-size" if old.kho_abi != "kho-v2" else ""
        return LayerVerdict("kho", old.kho_abi, new.kho_abi, "ok",
                            f"root {old.kho_abi!r}{extra} accepted; preserved memory reserved")
    return LayerVerdict("kho", old.kho_abi, new.kho_abi, "lost",
                        f"kho_populate(): root {old.kho_abi!r} is incompatible with "
                        f"{new.kho_abi!r}: no KHO boot, every preserved page is lost")


def _device_layer(layer: str, old: Profile, new: Profile, used: bool,
                  retrieve_failure: str) -> LayerVerdict:
    ow, nw = _wire(old, layer), _wire(new, layer)
    ov, nv = old.layer(layer), new.layer(layer)
    if ow is None and nw is None:
        return LayerVerdict(layer, ov, nv, "unused" if not used else "refused",
                            "neither kernel has it" + ("; the workload's devices cannot be "
                                                       "preserved" if used else ""))
    if ow is None:
        if not used:
            return LayerVerdict(layer, ov, nv, "unused", "the old kernel writes nothing here")
        why = {"pci": "no PCI live-update code: nothing marks devices preserved",
               "vfio": "no vfio-pci live-update handler: PRESERVE_FD of a device -> ENOENT",
               "iommufd": "no iommufd live-update handler: PRESERVE_FD of an iommufd -> ENOENT",
               "iommu": "no IOMMU FLB: page tables cannot be preserved"}[layer]
        return LayerVerdict(layer, ov, nv, "refused", why)
    if not used:
        return LayerVerdict(layer, ov, nv, "unused", "nothing preserved here by this workload")
    if nw is None:
        return LayerVerdict(layer, ov, nv, "lost",
                            f"the new kernel has no {layer} live-update code: {ow!r} is never "
                            "read; devices and IOMMU are re-initialised under running DMA")
    if ow != nw:
        what = {"pci": "PCI FLB", "iommu": "IOMMU FLB", "vfio": "vfio-pci file handler",
                "iommufd": "iommufd file handler"}[layer]
        consequence = {"pci": "ENOENT: no device is incoming, bus numbers are not inherited",
                       "iommu": "ENOENT: units re-initialised, preserved domains dropped",
                       "vfio": "the device files cannot be retrieved",
                       "iommufd": "the iommufd cannot be retrieved"}[layer]
        return LayerVerdict(layer, ov, nv, "lost",
                            f"{what} {ow!r} is not {nw!r}: {consequence}")
    if layer == "pci" and ov != nv:
        # same compatible, other layout (v6 built with "pci-v2" vs v7): decode fails
        status = "panic" if retrieve_failure == "panic" else "lost"
        return LayerVerdict(layer, ov, nv, status,
                            f"compatible {ow!r} names the {ov} layout in the old kernel and the "
                            f"{nv} layout in the new: retrieve fails (EINVAL), "
                            f"pci.retrieve_failure={retrieve_failure}")
    return LayerVerdict(layer, ov, nv, "ok", f"{ow!r} read")


def preflight(old: Profile, new: Profile, uses: frozenset[str] = frozenset(LAYERS),
              policy: Mapping[str, str] | None = None) -> Verdict:
    """Compare ``old``'s writers with ``new``'s readers for the layers in ``uses``.

    ``policy`` overrides the new kernel's policies (as ``luosim matrix
    --policy`` and a scenario's ``policy`` do).
    """
    new = new.with_policy(policy)
    rows: list[LayerVerdict] = []
    kho = _kho(old, new)
    rows.append(kho)
    handed_over = kho.status == "ok"
    # LUO
    if not handed_over:
        rows.append(LayerVerdict("luo", old.luo_abi, new.luo_abi, "lost",
                                 "not reached: no KHO hand-over"))
    elif old.luo_abi == new.luo_abi:
        rows.append(LayerVerdict("luo", old.luo_abi, new.luo_abi, "ok",
                                 f"{old.luo_abi!r} sessions and FLBs read"))
    else:
        rows.append(LayerVerdict("luo", old.luo_abi, new.luo_abi, "panic",
                                 f"luo_restore_fail(): {old.luo_abi!r} hand-over read by a "
                                 f"{new.luo_abi!r} kernel"))
    # memfd
    if "memfd" not in uses:
        rows.append(LayerVerdict("memfd", old.memfd_abi, new.memfd_abi, "unused",
                                 "no memfd preserved"))
    elif old.memfd_abi == new.memfd_abi:
        rows.append(LayerVerdict("memfd", old.memfd_abi, new.memfd_abi, "ok",
                                 f"{old.memfd_abi!r} files retrieved"))
    else:
        rows.append(LayerVerdict("memfd", old.memfd_abi, new.memfd_abi, "refused",
                                 f"no handler for {old.memfd_abi!r}: session deserialization "
                                 "fails, RETRIEVE_SESSION -> EIO"))
    retrieve_failure = new.policies.get("pci.retrieve_failure", "panic")
    for layer in ("pci", "vfio", "iommu", "iommufd"):
        rows.append(_device_layer(layer, old, new, layer in uses, retrieve_failure))
    # kexec-metadata: optional, never fatal (kho_in_kexec_metadata() only warns)
    om, nm = old.kexec_metadata, new.kexec_metadata
    if om and nm:
        md = ("kexec count carried over (+1)" if handed_over
              else "not read (no hand-over): count restarts at 1")
    elif om:
        md = "the new kernel does not read it: the blob stays reserved"
    elif nm:
        md = "nothing incoming: the count restarts at 1"
    else:
        md = "neither kernel has it"
    rows.append(LayerVerdict("kexec-metadata", om, nm, "ok" if (om or nm) else "unused", md))
    ob, nb = old.memblock_abi, new.memblock_abi
    if ob and ob == nb:
        mb = "reserve_mem regions revived at the same address" if handed_over else \
            "not read (no hand-over): reserve_mem regions allocated afresh"
        rows.append(LayerVerdict("memblock", ob, nb, "ok", mb))
    else:
        rows.append(LayerVerdict("memblock", ob, nb, "ok" if ob or nb else "unused",
                                 "reserve_mem regions allocated afresh"))
    if not handed_over:
        # nothing past the KHO root is read: say so, and what would happen otherwise
        rows = [r if r.layer in ("kho", "luo", "kexec-metadata", "memblock")
                or r.status == "unused" or (r.status == "refused" and r.layer != "memfd")
                else LayerVerdict(r.layer, r.old, r.new, "lost",
                                  f"not reached (no KHO hand-over); otherwise: {r.detail}")
                for r in rows]
    return Verdict(old.name, new.name, rows, *_overall(rows, uses, handed_over))


def _overall(rows: list[LayerVerdict], uses: frozenset[str],
             handed_over: bool) -> tuple[str, str]:
    by = {r.layer: r for r in rows}
    # before kexec: the old kernel cannot preserve (memfd refuses later, at retrieve)
    refused = [r for r in rows if r.status == "refused" and r.layer in uses
               and r.layer != "memfd"]
    if refused:
        # the agent preserves iommufd before the vfio cdevs: name the first that fails
        order = ("memfd", "iommufd", "vfio", "iommu", "pci")
        first = min(refused, key=lambda r: order.index(r.layer) if r.layer in order else 99)
        return "refused", f"{first.layer}: {first.detail}"
    if not uses:
        return "ok", "nothing is preserved"
    if not handed_over:
        return "unsafe", f"kho: {by['kho'].detail}"
    if by["luo"].status == "panic":
        return "panic", f"luo: {by['luo'].detail}"
    panics = [r for r in rows if r.status == "panic" and r.layer in uses]
    if panics:
        return "panic", f"{panics[0].layer}: {panics[0].detail}"
    if by["memfd"].status == "refused":
        return "refused", f"memfd: {by['memfd'].detail}"
    lost = [r for r in rows if r.status == "lost" and r.layer in uses]
    if lost:
        return "unsafe", "; ".join(f"{r.layer}: {r.detail}" for r in lost)
    return "ok", "every layer the workload uses is read by the new kernel"
