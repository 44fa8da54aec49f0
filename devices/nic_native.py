"""The NIC's native data path (C in devices/nic_build.py), as devices/nic.py uses it.

    native = load()            # the compiled module, or None (XOMB_NIC_PYTHON=1, no compiler)
    ctx = Native(native, nvfs) # the C state: one struct nic + its staging buffers
    vf.lock = NativeLock(ctx, i)   # Python and C share the VF's mutex

Built like vmm/kvm.py's KVM binding: the installed module if it is newer than
nic_build.py, else compiled once into build/cffi.  Any failure to build or load leaves
the pure Python path (load() returns None and says why in `why_not`).
"""
from __future__ import annotations

import os

why_not = ""
_mod = None
_tried = False


def _build():
    from vmm.cffi_modules import load as load_cffi_module
    return load_cffi_module("devices._nic_cffi", "devices/nic_build.py")


def load():
    """The compiled module, or None (then `why_not` says why)."""
    global _mod, _tried, why_not
    if os.environ.get("XOMB_NIC_PYTHON") == "1":
        why_not = "XOMB_NIC_PYTHON=1"
        return None
    if not _tried:
        _tried = True
        try:
            _mod = _build()
        except Exception as exc:            # no compiler, no headers: Python does it all
            why_not = f"native NIC path unavailable: {exc!r}"
            _mod = None
    return _mod


class Native:
    """One NIC's C state.  The memory and the uplink are given at attach()."""

    def __init__(self, mod, nvfs: int):
        self.ffi, self.lib = mod.ffi, mod.lib
        self.n = self.ffi.new("struct nic *")
        if self.lib.nic_init(self.n):
            raise OSError("pthread_mutex_init failed")
        self.n.nvfs = nvfs
        self.n.tap_fd = -1
        self.vf = [self.n.vf[i] for i in range(nvfs)]
        for v in self.vf:
            v.irqfd = -1
        self._stages: dict[str, object] = {}

    def attach(self, host_addr: int, ram_bytes: int, nframes: int, keep) -> None:
        self._keep = keep                   # the memory must outlive the C pointer
        self.n.mem = self.ffi.cast("uint8_t *", host_addr)
        self.n.ram_bytes = ram_bytes
        self.n.nframes = nframes

    def stage(self, who: str):
        """A staging area per calling thread (a TX worker or the uplink thread)."""
        s = self._stages.get(who)
        if s is None:
            s = self._stages[who] = self.ffi.new("struct nic_stage *")
        return s

    def leftovers(self, s) -> list[tuple[int, bytes]]:
        """(port, frame) the C code left to Python, in order."""
        out = []
        for k in range(s.nleft):
            f = s.left_frame[k]
            out.append((s.left_port[k],
                        bytes(self.ffi.buffer(self.lib.nic_frame(s, f), s.len[f]))))
        return out


class NativeLock:
    """`with vf.lock:` on the VF's C mutex (the call releases the GIL while it waits)."""

    def __init__(self, native: Native, index: int):
        self._lib, self._n, self._i = native.lib, native.n, index

    def __enter__(self):
        self._lib.nic_lock(self._n, self._i)
        return self

    def __exit__(self, *exc):
        self._lib.nic_unlock(self._n, self._i)
        return False

    def acquire(self):
        self.__enter__()
        return True

    def release(self):
        self._lib.nic_unlock(self._n, self._i)
