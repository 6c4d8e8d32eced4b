"""Kernel profiles: real kernel builds, one ABI version per hand-over layer.

A profile names one kernel build: for every layer of the hand-over (KHO root
and memory map, LUO, memfd, PCI, vfio, IOMMU, iommufd, kexec-metadata,
memblock) the ABI version it writes and accepts and the tree + commit that
version follows, plus its policies (spec luo.md §0, pci.md §0 and §2.1,
kho.md "Corrections").  ``m.boot("v6")`` and ``k.kexec("v7")`` pick one; a run
may go from one profile to another and incompatible pairs behave as the
kernel does.  Kernel code branches on a layer's version (``profile.kho_abi``,
``profile.layer("pci")``...), never on the profile's name.

A layer version of ``None`` means the build does not carry that code (a
mainline kernel without the PCI/vfio/IOMMU live-update series).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# policy name -> allowed values; every policy a profile has must be listed here
POLICIES: dict[str, tuple[str, ...]] = {
    # pci.md §9: v6 as posted WARNs and continues; agreed in review and v7+: panic
    "pci.retrieve_failure": ("panic", "warn"),
    # pci.md §3.1: which v6-series compatible the PCI FLB writes/accepts
    "pci.v6_compat": ("pci-v3", "pci-v2", "pci-v1"),
    # pci.md §2.1 / §6.2: DMA across kexec; vfio v4/v5 reset the device at freeze
    "dma.mode": ("reset-at-freeze", "continuous"),
    # pci.md §7.4.3: IOMMU v1 WARNs and falls back to the default domain when a
    # preserved domain cannot be restored (later versions UNCONFIRMED)
    "iommu.restore_failure": ("warn", "panic"),
}

#: The hand-over layers a profile lists, in boot order.
LAYERS: tuple[str, ...] = ("kho", "luo", "memfd", "pci", "vfio", "iommu", "iommufd",
                           "kexec-metadata", "memblock")

#: Every version a layer can have in luosim (each one has a codec).
LAYER_VERSIONS: dict[str, tuple[str, ...]] = {
    "kho": ("kho-v2", "kho-v3", "kho-v4"),
    "luo": ("luo-v1", "luo-v5"),
    "memfd": ("memfd-v1", "memfd-v2"),
    "pci": ("v6", "v7", "v9"),
    "vfio": ("vfio-pci-v1",),
    "iommu": ("iommu-liveupdate", "iommu-liveupdate-v1"),
    "iommufd": ("iommufd-v1",),
    "kexec-metadata": ("v1",),
    "memblock": ("memblock-v1",),
}

# Where each version is read.  Every entry: tree, commit, header.
SRC_KHO_V2 = "torvalds/linux 3f2ad900 include/linux/kho/abi/kexec_handover.h"
SRC_KHO_V3 = "gregkh/linux 9d87d0fc include/linux/kho/abi/kexec_handover.h"
SRC_KHO_V4 = ("LUO linked-block series v7 07/13 (kexec_handover.h kho-v3 -> kho-v4 "
              "with block.h, torvalds/linux 637315cb include/linux/kho/abi/block.h)")
SRC_LUO_V1 = "torvalds/linux cab056f2 include/linux/kho/abi/luo.h (LUO 7.0, luo-v1 FDT)"
SRC_LUO_V5 = "torvalds/linux cc4adab1 include/linux/kho/abi/luo.h (luo-v5)"
SRC_MEMFD_V1 = "torvalds/linux ac2d8102 include/linux/kho/abi/memfd.h (memfd-v1)"
SRC_MEMFD_V2 = ("spec luo.md §0 P4 (7.3): memfd-v2 with seals (the header was not found in "
                "the stored trees; torvalds/linux 32cb2729 still has memfd-v1)")
SRC_PCI_V6 = "PCI live-update series v6 (May 2026) include/linux/kho/abi/pci.h"
SRC_PCI_V7 = "PCI live-update series v7 (Jul 2026) include/linux/kho/abi/pci.h"
SRC_PCI_V9 = "dmatlack/linux PCI v9-era snapshot (Sep 2026) include/linux/kho/abi/pci.h"
SRC_VFIO = "vfio/pci live-update series v5 include/linux/kho/abi/vfio_pci.h"
SRC_IOMMU = "samikhawaja/linux 07a49313 include/linux/kho/abi/iommu.h"
SRC_IOMMU_LU1 = "samikhawaja/linux ef754267 include/linux/kho/abi/iommu.h"
SRC_IOMMUFD = "samikhawaja/linux 07a49313 drivers/iommu/iommufd/liveupdate.c"
SRC_KEXEC_META = "torvalds/linux 40735a68 include/linux/kho/abi/kexec_metadata.h"
SRC_MEMBLOCK = "torvalds/linux c17ee635 include/linux/kho/abi/memblock.h"


@dataclass(frozen=True)
class Profile:
    """ABI and behaviour of one kernel build."""

    name: str
    luo_abi: str  # "luo-v1" (FDT, spec luo.md §5.1) or "luo-v5" (struct, §5.2)
    pci_abi: str  # "v6" fixed array, "v7" block set, "v9" versioned, "none" no PCI series
    pci_cleanup: str  # removal semantics of cleanup_device: "v6" | "v7" | "v9" (pci.md §4.6)
    pci_bus_rule: str  # "v6" per-scan inheritance, "v9" sticky had_incoming (pci.md §5.1)
    kho_abi: str = "kho-v2"  # root FDT compatible written and accepted
    memfd_abi: str = "memfd-v1"
    vfio_abi: str | None = "vfio-pci-v1"
    iommu_abi: str | None = "iommu-liveupdate"  # the IOMMU FLB compatible
    iommufd_abi: str | None = "iommufd-v1"
    kexec_metadata: str | None = None  # "v1": KHO_KEXEC_METADATA_VERSION 1
    memblock_abi: str | None = "memblock-v1"
    sources: Mapping[str, str] = field(default_factory=dict)
    # iommufd live update: "phase1" (retrieve EOPNOTSUPP, never finishes) or
    # "phase2" (RETRIEVE_FD + IOMMU_HWPT_LU_RESTORE; luosim.kernel.iommu.iommufd)
    iommufd_lu: str = "phase1"
    # kernel config defaults of this build (luosim.kernel.config.CONFIG_DEFAULTS keys)
    config: Mapping[str, bool] = field(default_factory=dict)
    policies: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def iommu_flb_compat(self) -> str:
        """The IOMMU FLB compatible (the FLB object exists even where it is never registered)."""
        return self.iommu_abi or "iommu-liveupdate"

    @property
    def pci_compat(self) -> str:
        if self.pci_abi == "none":
            return ""
        if self.pci_abi == "v6":
            return self.policies.get("pci.v6_compat", "pci-v3")
        return {"v7": "pci-v2", "v9": "pci"}[self.pci_abi]

    def layer(self, name: str) -> str | None:
        """The ABI version of layer ``name``; None when this build does not have it."""
        value: str | None = {
            "kho": self.kho_abi, "luo": self.luo_abi, "memfd": self.memfd_abi,
            "pci": None if self.pci_abi == "none" else self.pci_abi,
            "vfio": self.vfio_abi, "iommu": self.iommu_abi, "iommufd": self.iommufd_abi,
            "kexec-metadata": self.kexec_metadata, "memblock": self.memblock_abi,
        }[name]
        return value

    def layers(self) -> list[dict[str, str | None]]:
        """Per layer: version (None = absent), the compatible on the wire, and the source."""
        rows: list[dict[str, str | None]] = []
        for name in LAYERS:
            version = self.layer(name)
            wire = version
            if name == "pci" and version is not None:
                wire = self.pci_compat
            rows.append({"layer": name, "version": version, "compatible": wire,
                         "source": self.sources.get(name) if version is not None else None})
        return rows

    def policy(self, name: str) -> str:
        try:
            return self.policies[name]
        except KeyError:
            raise KeyError(f"profile {self.name} has no policy {name!r}") from None

    def with_policy(self, overrides: Mapping[str, str] | None) -> Profile:
        if not overrides:
            return self
        merged = dict(self.policies)
        for key, value in overrides.items():
            check_policy(key, value)
            merged[key] = value
        return replace(self, policies=merged)


def check_policy(key: str, value: str) -> None:
    allowed = POLICIES.get(key)
    if allowed is None:
        raise ValueError(f"unknown policy {key!r} (known: {', '.join(sorted(POLICIES))})")
    if value not in allowed:
        raise ValueError(f"policy {key}: {value!r} is not one of {', '.join(allowed)}")


_DEFAULTS = {"pci.retrieve_failure": "panic", "pci.v6_compat": "pci-v3",
             "dma.mode": "reset-at-freeze", "iommu.restore_failure": "warn"}

_V1_SOURCES = {"kho": SRC_KHO_V2, "luo": SRC_LUO_V1, "memfd": SRC_MEMFD_V1,
               "memblock": SRC_MEMBLOCK}
_V5_SOURCES = {"luo": SRC_LUO_V5, "memfd": SRC_MEMFD_V2, "kexec-metadata": SRC_KEXEC_META,
               "memblock": SRC_MEMBLOCK}
_SERIES = {"vfio": SRC_VFIO, "iommu": SRC_IOMMU, "iommufd": SRC_IOMMUFD}

PROFILES: dict[str, Profile] = {
    "v6": Profile("v6", luo_abi="luo-v1", pci_abi="v6", pci_cleanup="v6", pci_bus_rule="v6",
                  sources={**_V1_SOURCES, **_SERIES, "pci": SRC_PCI_V6},
                  policies=dict(_DEFAULTS),
                  description="PCI series v6 (May 2026) on LUO 7.0 (luo-v1 FDT, kho-v2)"),
    "v7": Profile("v7", luo_abi="luo-v1", pci_abi="v7", pci_cleanup="v7", pci_bus_rule="v6",
                  sources={**_V1_SOURCES, **_SERIES, "pci": SRC_PCI_V7},
                  policies=dict(_DEFAULTS),
                  description="PCI series v7 (Jul 2026): block-set ABI, retrieve failure panics"),
    "v7-iommu-v3": Profile(
        "v7-iommu-v3", luo_abi="luo-v1", pci_abi="v7", pci_cleanup="v7", pci_bus_rule="v6",
        iommu_abi="iommu-liveupdate-v1",
        sources={**_V1_SOURCES, **_SERIES, "pci": SRC_PCI_V7, "iommu": SRC_IOMMU_LU1},
        policies=dict(_DEFAULTS),
        description="PCI v7 with the IOMMU series v2/v3 FLB (iommu-liveupdate-v1, unversioned)"),
    "v9": Profile("v9", luo_abi="luo-v5", pci_abi="v9", pci_cleanup="v9", pci_bus_rule="v9",
                  kho_abi="kho-v3", memfd_abi="memfd-v2", kexec_metadata="v1",
                  sources={**_V5_SOURCES, **_SERIES, "kho": SRC_KHO_V3, "pci": SRC_PCI_V9},
                  iommufd_lu="phase2", policies=dict(_DEFAULTS),
                  description="PCI v9-era snapshot (Sep 2026) on LUO 7.3 (luo-v5, kho-v3 "
                              "blob-size, kexec-metadata)"),
    "mainline-7.0": Profile(
        "mainline-7.0", luo_abi="luo-v1", pci_abi="none", pci_cleanup="v6", pci_bus_rule="v6",
        vfio_abi=None, iommu_abi=None, iommufd_abi=None,
        sources=dict(_V1_SOURCES), policies=dict(_DEFAULTS),
        description="mainline LUO 7.0 (luo-v1 FDT, memfd-v1, kho-v2); no PCI/vfio/IOMMU series"),
    "mainline-7.3": Profile(
        "mainline-7.3", luo_abi="luo-v5", pci_abi="none", pci_cleanup="v9", pci_bus_rule="v9",
        kho_abi="kho-v3", memfd_abi="memfd-v2", kexec_metadata="v1",
        vfio_abi=None, iommu_abi=None, iommufd_abi=None,
        sources={**_V5_SOURCES, "kho": SRC_KHO_V3}, policies=dict(_DEFAULTS),
        description="mainline LUO 7.3 (luo-v5, memfd-v2, kho-v3 + kexec-metadata); no PCI "
                    "series"),
    "mainline-block": Profile(
        "mainline-block", luo_abi="luo-v5", pci_abi="none", pci_cleanup="v9", pci_bus_rule="v9",
        kho_abi="kho-v4", memfd_abi="memfd-v2", kexec_metadata="v1",
        vfio_abi=None, iommu_abi=None, iommufd_abi=None,
        sources={**_V5_SOURCES, "kho": SRC_KHO_V4}, policies=dict(_DEFAULTS),
        description="mainline LUO with the linked-block series (block.h, kho-v4); no PCI "
                    "series"),
}


def get_profile(name: str, policy: Mapping[str, str] | None = None) -> Profile:
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown kernel profile {name!r} (known: {', '.join(PROFILES)})") \
            from None
    return base.with_policy(policy)
