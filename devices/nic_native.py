"""The NIC's native data path (C in devices/nic_build.py), as devices/nic.py uses it.

    native = load()            # the compiled module, or None (XOMB_NIC_PYTHON=1, no compiler)
    ctx = Native(native, nvfs) # the C state: one struct nic + its staging buffers
    vf.lock = NativeLock(ctx, i)   # Python and C share the VF's mutex

Built like vmm/kvm.py's KVM binding: the installed module if it is newer than
nic_build.py, else compiled once into build/cffi.  Any failure to build or load leaves
the pure Python path (load() returns None and says why in `why_not`).
"""
from __future__ import annotations

import importlib.util
import os
import sys

why_not = ""
_mod = None
_tried = False


def _build():
    build_py = os.path.join(os.path.dirname(__file__), "nic_build.py")
    src_mtime = os.path.getmtime(build_py)
    spec = importlib.util.find_spec("devices._nic_cffi")
    if spec is not None and spec.origin and os.path.getmtime(spec.origin) >= src_mtime:
        from devices import _nic_cffi       # type: ignore[attr-defined]
        return _nic_cffi
    from vmm.paths import BUILD
    tmp = BUILD / "cffi"
    so = None
    hits = sorted((tmp / "devices").glob("_nic_cffi*.so")) if tmp.is_dir() else []
    if hits and hits[0].stat().st_mtime >= src_mtime:
        so = str(hits[0])
    if so is None:                          # compile privately, then rename into place
        import tempfile
        from devices.nic_build import ffibuilder
        (tmp / "devices").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmp) as work:
            built = ffibuilder.compile(tmpdir=work, verbose=False)
            so = str(tmp / "devices" / os.path.basename(built))
            os.replace(built, so)
    spec = importlib.util.spec_from_file_location("devices._nic_cffi", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["devices._nic_cffi"] = mod
    return mod


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
