"""Descriptions of every scenario-file property, for ``luosim schema``.

Kept apart from the models in schema.py and attached to each model's JSON
Schema through ``json_schema_extra`` (one hook on the base model), so the
field definitions, their limits and validators stay as they are.  A test
checks that every property of the schema has a description here.
"""

from __future__ import annotations

from typing import Any

_PCI_FUNCTION = {
    "slot": "PCI device number on the parent bus (0-31).",
    "name": "Name used everywhere else in the file (VM devices, hot_add, reset_bridges) "
            "and in reports; letters, digits, '_', '.', '-'.",
    "vendor": "PCI vendor ID (16 bits; an integer or a string such as '0x8086').",
    "device": "PCI device ID (16 bits; an integer or a string such as '0x0b25').",
    "acs": "ACS capability present (Access Control Services); default: on for PCIe "
           "root and switch ports, off for PCI bridges and endpoints.",
    "ari": "Endpoint: ARI capability present; port: ARI Forwarding supported "
           "(Alternative Routing-ID Interpretation).",
    "hotplug": "Hot-plug capable slot.",
    "present": "The function answers config cycles at power-on (false: an empty slot "
               "to hot-add into).",
    "firmware_bus": "Bus numbers the firmware programs into this bridge at cold boot "
                    "(default: from the segment's firmware_numbering).",
    "children": "Functions on the bus below this bridge or port.",
    "needs_acs_quirk": "ACS is enabled through a device-specific quirk rather than the "
                       "capability (as drivers/pci/quirks.c does for some root ports).",
}

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "Scenario": {
        "name": "Short name of the scenario, used in reports and trace file names.",
        "description": "Free text: what the scenario shows.",
        "machine": "The hardware: memory, KHO scratch, PCI segments with their devices.",
        "kernels": "The kernel booted first and the kernel(s) each live update kexecs into.",
        "policy": "Kernel policy overrides KEY: VALUE (see `luosim run --policy`), e.g. "
                  "pci.retrieve_failure: warn.",
        "workload": "What runs before the update: VMs with memfd guest RAM, assigned "
                    "devices and DMA, hot-added devices.",
        "update": "How the live-update agent preserves, retrieves and finishes.",
        "faults": "Faults injected in every run, POINT[#N]=EFFECT (see `luosim faults`).",
        "expect": "Documented expected outcome per policy (checked by the test suite).",
    },
    "MachineSpec": {
        "memory": "Physical memory: bytes or a size such as '16GiB'.",
        "kho_scratch": "Size of the KHO scratch area the next kernel boots from (bytes or "
                       "a size such as '64MiB').",
        "segments": "PCI segments (domains), each with its root bus, devices and IOMMU.",
    },
    "SegmentSpec": {
        "segment": "PCI segment (domain) number.",
        "root_bus": "Number of the segment's root bus.",
        "firmware_numbering": "How firmware assigns bridge bus numbers at cold boot: dfs "
                              "(depth first, like Linux), bfs (breadth first) or sparse "
                              "(depth first with spare numbers).",
        "firmware_bus_gap": "sparse numbering: spare bus numbers left at the end of each "
                            "bridge's window.",
        "iommu": "The segment has an IOMMU (one VT-d unit) translating its DMA.",
        "devices": "Functions on the root bus (root ports, endpoints, bridges, switches).",
    },
    "DeviceSpec": {
        **_PCI_FUNCTION,
        "kind": "endpoint, root-port, bridge (PCI-to-PCI) or switch (an upstream port "
                "whose downstream ports are listed in ports).",
        "functions": "Function numbers of a multi-function device (default: [0]).",
        "sriov": "SR-IOV capability of an endpoint (its virtual functions).",
        "ports": "A switch's downstream ports.",
    },
    "PortSpec": {k: v for k, v in _PCI_FUNCTION.items() if k != "needs_acs_quirk"},
    "BusRegs": {
        "primary": "Primary bus number register (the bus the bridge sits on).",
        "secondary": "Secondary bus number register (the bus right below the bridge).",
        "subordinate": "Subordinate bus number register (the highest bus below the bridge).",
    },
    "SriovSpec": {
        "total_vfs": "TotalVFs: number of virtual functions.",
        "vf_offset": "First VF Offset: routing-ID distance from the PF to VF 1.",
        "vf_stride": "VF Stride: routing-ID distance between consecutive VFs.",
    },
    "KernelsSpec": {
        "before": "The kernel cold-booted first.",
        "after": "The kernels of the live update(s), in order: one kexec each.",
    },
    "KernelSpec": {
        "profile": "Kernel profile (v6, v7, v9): which hand-over ABIs and policies this "
                   "kernel has (`luosim matrix` runs every pair).",
        "cmdline": "Kernel command line, e.g. 'pci=assign-busses' or 'init_on_free=0'.",
        "config": "Kernel config switches CONFIG_NAME: true|false over the profile's "
                  "defaults (e.g. CONFIG_IOMMU_LIVEUPDATE: false); `luosim.kernel.config` "
                  "lists the known ones.",
    },
    "WorkloadSpec": {
        "vms": "The virtual machines running before the update.",
        "hot_add": "Devices (by name, present: false) hot-added after boot, before the VMs "
                   "start.",
        "blackout_ms": "Simulated time of the kexec jump and early boot, in milliseconds.",
    },
    "VmSpec": {
        "name": "VM name (also its LUO session name with sessions: per-vm).",
        "memory": "Guest RAM, a memfd: bytes or a size such as '4GiB' (multiple of 2 MiB).",
        "folio_order": "Page order of the memfd's folios (0 = 4 KiB, 9 = 2 MiB).",
        "devices": "Names of the PCI functions assigned to the VM through vfio-pci.",
        "dma": "DMA the VM's devices do into guest RAM (none if absent).",
        "ram_backing": "What backs guest RAM: memfd (shmem), hugetlb-2M or hugetlb-1G "
                       "(MFD_HUGETLB memfd from the kernel's hugepage pool; 1G needs whole GiB).",
    },
    "DmaSpec": {
        "rate_per_ms": "DMA writes per simulated millisecond, per device.",
        "length": "Size of the guest-RAM buffer each device writes into (bytes or a size).",
    },
    "UpdateSpec": {
        "sessions": "per-vm: one LUO session per VM; single: one session for everything.",
        "preserve": "all: memfds, iommufds and devices; memory-only: memfds; none: nothing "
                    "(a plain kexec).",
        "finish": "FINISH the sessions after retrieving (those that can be finished).",
        "reset_bridges": "Bridges (by name) that lose their bus numbers during the kexec.",
    },
    "ExpectSpec": {
        "outcome": "ok, refused, panic or unsafe.",
        "note": "Why this outcome is the right one.",
        "policy": "Policy overrides under which this outcome is expected.",
    },
}


def describe(schema: dict[str, Any], model: Any) -> None:
    """``json_schema_extra`` hook: add the descriptions of ``model``'s properties."""
    texts = DESCRIPTIONS.get(getattr(model, "__name__", ""), {})
    for name, prop in schema.get("properties", {}).items():
        if name in texts and "description" not in prop:
            prop["description"] = texts[name]
