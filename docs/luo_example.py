"""Live Update Orchestrator in luosim: two sessions of memfds carried over two kexecs.

Run with ``PYTHONPATH=src python docs/luo_example.py``.  The agent preserves
guest RAM (a 64 MiB memfd of 2 MiB folios) and a small config memfd, kexecs,
retrieves both, finishes the old sessions, preserves the same files into new
sessions and kexecs again.  Nothing is carried forward automatically: each
generation retrieves, FINISHes, then re-preserves (spec luo.md §1.3).
"""

from __future__ import annotations

from luosim.hw.machine import Machine
from luosim.kernel.mm.memfd import MemfdFile


def main() -> None:
    m = Machine.from_topology({})  # 16 GiB, no devices
    k = m.boot("v9", cmdline="")  # live update is on unless liveupdate=off
    lu = k.open_liveupdate()

    ram = k.memfd_create("guest-ram", folio_order=9)
    ram.fill(0, 64 << 20, seed=2026)  # synthetic content, whole 2 MiB folios
    ram.write(4096, b"guest kernel text")
    cfg = k.memfd_create("vm-config")
    cfg.write(0, b'{"vcpus": 4, "name": "vm0"}')
    ram_fp = ram.fingerprint()
    cfg_bytes = cfg.read(0, cfg.size)

    lu.create_session("vm0-ram").preserve_fd(ram, token=1)
    lu.create_session("vm0-cfg").preserve_fd(cfg, token=2)
    lu.close()  # sessions live on while their fds stay open

    for generation in (1, 2):
        k = k.kexec("v9")  # reboot(KEXEC): the old kernel's objects are dead now
        assert k.liveupdate.liveupdate_number_in == generation
        lu = k.open_liveupdate()
        s_ram = lu.retrieve_session(f"vm0-ram{'' if generation == 1 else '-2'}")
        s_cfg = lu.retrieve_session(f"vm0-cfg{'' if generation == 1 else '-2'}")
        ram = s_ram.retrieve_fd(1)
        cfg = s_cfg.retrieve_fd(2)
        assert isinstance(ram, MemfdFile) and isinstance(cfg, MemfdFile)
        assert ram.fingerprint() == ram_fp and ram.read(4096, 17) == b"guest kernel text"
        assert cfg.read(0, cfg.size) == cfg_bytes
        s_ram.finish()  # the files are ordinary memfds from here on
        s_cfg.finish()
        s_ram.close()
        s_cfg.close()
        if generation == 1:  # carry them into the next live update
            lu.create_session("vm0-ram-2").preserve_fd(ram, token=1)
            lu.create_session("vm0-cfg-2").preserve_fd(cfg, token=2)
        lu.close()
        print(f"generation {generation}: {ram.size >> 20} MiB RAM and "
              f"{cfg.size} config bytes intact")
    print("kexec x2 ok; unclaimed KHO blocks:", len(k.kho.unclaimed()))


if __name__ == "__main__":
    main()
