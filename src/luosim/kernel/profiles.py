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

from luosim.abi.versions import ABI_VERSIONS, source_of
from luosim.abi.vfio import VFIO_LAYOUTS

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

#: Every version a layer can have in luosim: one per codec, read off the codec
#: registries (luosim.abi.versions), so a new codec shows up here by itself.
LAYER_VERSIONS: dict[str, tuple[str, ...]] = {layer: tuple(ABI_VERSIONS[layer])
                                              for layer in LAYERS}


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

    def compatible(self, name: str) -> str | None:
        """The compatible layer ``name`` writes on the wire (one compatible may name
        several layouts: PCI v6/v7 "pci-v2", vfio 6- and 9-byte "vfio-pci-v1")."""
        version = self.layer(name)
        if version is None:
            return None
        if name == "pci":
            return self.pci_compat
        if name == "vfio":
            return VFIO_LAYOUTS[version].COMPATIBLE
        return version

    def source(self, name: str) -> str | None:
        """Tree, commit and header of layer ``name``: the codec's own citation."""
        version = self.layer(name)
        return None if version is None else source_of(name, version)

    def layers(self) -> list[dict[str, str | None]]:
        """Per layer: version (None = absent), the compatible on the wire, and the source."""
        return [{"layer": name, "version": self.layer(name), "compatible": self.compatible(name),
                 "source": self.source(name)} for name in LAYERS]

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

PROFILES: dict[str, Profile] = {
    "v6": Profile("v6", luo_abi="luo-v1", pci_abi="v6", pci_cleanup="v6", pci_bus_rule="v6",
                  policies=dict(_DEFAULTS),
                  description="PCI series v6 (May 2026) on LUO 7.0 (luo-v1 FDT, kho-v2)"),
    "v7": Profile("v7", luo_abi="luo-v1", pci_abi="v7", pci_cleanup="v7", pci_bus_rule="v6",
                  policies=dict(_DEFAULTS),
                  description="PCI series v7 (Jul 2026): block-set ABI, retrieve failure panics"),
    "v7-iommu-v3": Profile(
        "v7-iommu-v3", luo_abi="luo-v1", pci_abi="v7", pci_cleanup="v7", pci_bus_rule="v6",
        iommu_abi="iommu-liveupdate-v1",
        policies=dict(_DEFAULTS),
        description="PCI v7 with the IOMMU series v2/v3 FLB (iommu-liveupdate-v1, unversioned)"),
    # jackYoung0915/anolis-cloud-kernel: vfio_pci.h 5a52741a ("vfio-pci-v2", 11 B with
    # the iommufd token), iommu.h c72b106b ("iommu-liveupdate-v1": ef754267's generic
    # bytes, no VT-d part), LUO FDT luo-v1 (kernel/liveupdate/luo_core.c 19809d4f) and a
    # fixed-array pci_ser {max_nr_devices, nr_devices, devices[]} (drivers/pci/liveupdate.c
    # 00b72a17; pci.h not stored, so the compatible is the v6 default, UNCONFIRMED)
    "anolis-iommu-v3": Profile(
        "anolis-iommu-v3", luo_abi="luo-v1", pci_abi="v6", pci_cleanup="v6", pci_bus_rule="v6",
        vfio_abi="vfio-pci-v2", iommu_abi="iommu-liveupdate-v1",
        policies=dict(_DEFAULTS),
        description="anolis-cloud-kernel backport: vfio-pci-v2 (reset_works + iommufd token) "
                    "with the IOMMU v2/v3 FLB iommu-liveupdate-v1 on LUO 7.0 (luo-v1, kho-v2) "
                    "and a fixed-array PCI FLB"),
    # The IOMMU v1 series (lore 20260203220948.2176157-1-skhawaja@google.com) appends the
    # token to samikhawaja d835969e's {u16 bdf; u16 domain; u8 reset_works}; its own FLB
    # "iommu-v1" (12-byte object header) has no codec, so the series' next FLB stands in.
    "iommu-v1": Profile(
        "iommu-v1", luo_abi="luo-v1", pci_abi="v6", pci_cleanup="v6", pci_bus_rule="v6",
        vfio_abi="vfio-pci-v1-iommu", iommu_abi="iommu-liveupdate-v1",
        policies=dict(_DEFAULTS),
        description="IOMMU series v1 (Feb 2026): 9-byte vfio-pci-v1 record with the iommufd "
                    "token; FLB iommu-liveupdate-v1 stands in for its unmodelled iommu-v1"),
    "v9": Profile("v9", luo_abi="luo-v5", pci_abi="v9", pci_cleanup="v9", pci_bus_rule="v9",
                  kho_abi="kho-v3", memfd_abi="memfd-v2", kexec_metadata="v1",
                  iommufd_lu="phase2", policies=dict(_DEFAULTS),
                  description="PCI v9-era snapshot (Sep 2026) on LUO 7.3 (luo-v5, kho-v3 "
                              "blob-size, kexec-metadata)"),
    "mainline-7.0": Profile(
        "mainline-7.0", luo_abi="luo-v1", pci_abi="none", pci_cleanup="v6", pci_bus_rule="v6",
        vfio_abi=None, iommu_abi=None, iommufd_abi=None,
        description="mainline LUO 7.0 (luo-v1 FDT, memfd-v1, kho-v2); no PCI/vfio/IOMMU series"),
    "mainline-7.3": Profile(
        "mainline-7.3", luo_abi="luo-v5", pci_abi="none", pci_cleanup="v9", pci_bus_rule="v9",
        kho_abi="kho-v3", memfd_abi="memfd-v2", kexec_metadata="v1",
        vfio_abi=None, iommu_abi=None, iommufd_abi=None,
        description="mainline LUO 7.3 (luo-v5, memfd-v2, kho-v3 + kexec-metadata); no PCI "
                    "series"),
    "mainline-block": Profile(
        "mainline-block", luo_abi="luo-v5", pci_abi="none", pci_cleanup="v9", pci_bus_rule="v9",
        kho_abi="kho-v4", memfd_abi="memfd-v2", kexec_metadata="v1",
        vfio_abi=None, iommu_abi=None, iommufd_abi=None,
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
