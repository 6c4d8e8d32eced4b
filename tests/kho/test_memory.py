"""Unit tests for hw/memory.py: sparse pages, folios, scrub (issue: Foundation)."""

from __future__ import annotations

import pytest

from luosim.hw.memory import PAGE_SIZE, POISON_BYTE, MemoryAccessError, PhysicalMemory


def test_unwritten_memory_reads_zero_before_first_kexec() -> None:
    mem = PhysicalMemory(1 << 30)
    assert mem.read(0x5000, 16) == bytes(16)


def test_write_read_across_page_boundary() -> None:
    mem = PhysicalMemory(1 << 30)
    data = bytes(range(256)) * 40
    mem.write(PAGE_SIZE - 100, data)
    assert mem.read(PAGE_SIZE - 100, len(data)) == data


def test_access_outside_ram_is_a_machine_check() -> None:
    mem = PhysicalMemory(1 << 30)
    with pytest.raises(MemoryAccessError):
        mem.read((1 << 30) - 4, 8)


def test_synthetic_folio_costs_one_entry_and_has_stable_fingerprint() -> None:
    mem = PhysicalMemory(64 << 30)
    mem.fill_folio(1 << 30, 18, seed=7)  # 1 GiB in one entry
    assert mem.resident_pages() == 1 << 18
    fp = mem.folio_fingerprint(1 << 30, 18)
    mem.write((1 << 30) + 12345, b"x")
    assert mem.folio_fingerprint(1 << 30, 18) != fp
    assert mem.read((1 << 30) + 12345, 1) == b"x"


def test_same_content_same_fingerprint() -> None:
    a, b = PhysicalMemory(1 << 30), PhysicalMemory(1 << 30)
    for m in (a, b):
        m.fill_folio(2 << 20, 9, seed=1)
        m.write((2 << 20) + 8, b"abc")
    assert a.folio_fingerprint(2 << 20, 9) == b.folio_fingerprint(2 << 20, 9)


def test_scrub_poisons_everything_not_kept() -> None:
    mem = PhysicalMemory(1 << 30)
    mem.write(0x10000, b"keep me")
    mem.write(0x20000, b"lose me")
    mem.fill_folio(4 << 20, 9, seed=3)
    mem.fill_folio(8 << 20, 9, seed=4)
    fp = mem.folio_fingerprint(4 << 20, 9)
    mem.scrub([(0x10000, PAGE_SIZE), (4 << 20, 2 << 20)])
    assert mem.read(0x10000, 7) == b"keep me"
    assert mem.read(0x20000, 7) == bytes([POISON_BYTE]) * 7
    assert mem.folio_fingerprint(4 << 20, 9) == fp
    assert mem.read(8 << 20, 4) == bytes([POISON_BYTE]) * 4
    # never-written memory is garbage after kexec too
    assert mem.read(0x30000, 2) == bytes([POISON_BYTE]) * 2


def test_zero_after_scrub_gives_zeros_cheaply() -> None:
    mem = PhysicalMemory(1 << 30)
    mem.scrub([])
    mem.zero(2 << 20, 2 << 20)
    assert mem.read((2 << 20) + 4096 * 17, 32) == bytes(32)
    assert mem.resident_pages() == 512
