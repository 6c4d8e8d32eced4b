"""Kernel profiles: which ABI versions and policies a kernel version has.

A profile names the choices of one kernel build (spec luo.md §0, pci.md §0
and §2.1).  ``m.boot("v6")`` and ``k.kexec("v7")`` pick one; a run may go
from one profile to another and incompatible pairs behave as the spec says.
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


@dataclass(frozen=True)
class Profile:
    """ABI and behaviour of one kernel version."""

    name: str
    luo_abi: str  # "luo-v1" (FDT, spec luo.md §5.1) or "luo-v5" (struct, §5.2)
    pci_abi: str  # "v6" fixed array, "v7" block set, "v9" versioned
    pci_cleanup: str  # removal semantics of cleanup_device: "v6" | "v7" | "v9" (pci.md §4.6)
    pci_bus_rule: str  # "v6" per-scan inheritance, "v9" sticky had_incoming (pci.md §5.1)
    iommu_flb_compat: str = "iommu-liveupdate"
    # iommufd live update: "phase1" (retrieve EOPNOTSUPP, never finishes) or
    # "phase2" (RETRIEVE_FD + IOMMU_HWPT_LU_RESTORE; luosim.kernel.iommu.iommufd)
    iommufd_lu: str = "phase1"
    # kernel config defaults of this build (luosim.kernel.config.CONFIG_DEFAULTS keys)
    config: Mapping[str, bool] = field(default_factory=dict)
    policies: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def pci_compat(self) -> str:
        if self.pci_abi == "v6":
            return self.policies.get("pci.v6_compat", "pci-v3")
        return {"v7": "pci-v2", "v9": "pci"}[self.pci_abi]

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
                  description="PCI series v6 (May 2026) on LUO with the luo-v1 FDT ABI"),
    "v7": Profile("v7", luo_abi="luo-v1", pci_abi="v7", pci_cleanup="v7", pci_bus_rule="v6",
                  policies=dict(_DEFAULTS),
                  description="PCI series v7 (Jul 2026): block-set ABI, retrieve failure panics"),
    "v9": Profile("v9", luo_abi="luo-v5", pci_abi="v9", pci_cleanup="v9", pci_bus_rule="v9",
                  iommufd_lu="phase2", policies=dict(_DEFAULTS),
                  description="PCI v9-era snapshot (Sep 2026) on LUO 7.2+ (luo-v5 struct ABI)"),
}


def get_profile(name: str, policy: Mapping[str, str] | None = None) -> Profile:
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown kernel profile {name!r} (known: {', '.join(PROFILES)})") \
            from None
    return base.with_policy(policy)
