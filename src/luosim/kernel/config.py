"""Kernel build configuration switches that the live-update selftests exercise.

A real kernel is built with or without ``CONFIG_IOMMU_LIVEUPDATE`` and the
like; the model makes them boot options: ``m.boot(profile, config={...})``
and ``k.kexec(profile, config={...})``.  A profile may set its own defaults
(``Profile.config``); an unknown key is a ``ValueError`` naming it.

What each switch does in the model (and where the kernel decides it):

* ``CONFIG_LIVEUPDATE``: no LUO at all - ``/dev/liveupdate`` does not exist
  (kernel/liveupdate/Kconfig; the selftests skip on a failed open).
* ``CONFIG_IOMMU_LIVEUPDATE``: drivers/iommu/liveupdate.c is not built, so
  ``iommu_liveupdate_register_flb()`` is the EOPNOTSUPP stub: iommufd
  registers no LUO handler (an iommufd cannot be preserved: ENOENT), vfio
  preserves devices without ``iommufd_device_preserve()`` (the vfio-only
  series, whose selftests preserve a device attached to an unmarked HWPT),
  and the next kernel's IOMMU ignores any incoming IOMMU FLB.
* ``CONFIG_VFIO_PCI_LIVEUPDATE``: vfio-pci registers no LUO handler (a vfio
  device fd cannot be preserved: ENOENT).
* ``CONFIG_VFIO_CONTAINER`` / ``CONFIG_IOMMUFD_VFIO_CONTAINER``: who serves
  ``/dev/vfio/vfio`` (legacy type1 container, or iommufd's compat type1
  container); neither (``open_container`` ENOENT) when both are off.
"""

from __future__ import annotations

from collections.abc import Mapping

CONFIG_DEFAULTS: dict[str, bool] = {
    "CONFIG_LIVEUPDATE": True,
    "CONFIG_IOMMU_LIVEUPDATE": True,
    "CONFIG_VFIO_PCI_LIVEUPDATE": True,
    "CONFIG_VFIO_CONTAINER": True,
    "CONFIG_IOMMUFD_VFIO_CONTAINER": False,
}


def resolve_config(profile_defaults: Mapping[str, bool] | None,
                   overrides: Mapping[str, object] | None) -> dict[str, bool]:
    """Defaults, then the profile's, then the boot's; ValueError for an unknown key."""
    out = dict(CONFIG_DEFAULTS)
    for layer in (profile_defaults or {}, overrides or {}):
        for key, value in layer.items():
            if key not in CONFIG_DEFAULTS:
                raise ValueError(f"unknown kernel config option {key!r} "
                                 f"(known: {', '.join(sorted(CONFIG_DEFAULTS))})")
            if not isinstance(value, bool):
                raise ValueError(f"kernel config {key}: {value!r} is not a boolean")
            out[key] = value
    return out
