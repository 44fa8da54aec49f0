"""Thin Pythonic wrappers over /dev/kvm (cffi API mode, see vmm/kvm_build.py).

    kvm = Kvm()                       # opens /dev/kvm (path is a parameter)
    vm = kvm.create_vm()
    vm.set_user_memory_region(0, 0, size, host_addr)
    vcpu = vm.create_vcpu(0)
    reason = vcpu.run()               # exit reason (lib.KVM_EXIT_*)

KVM_RUN goes through cffi (returns -1/errno, never retried by Python), so a
signal or `immediate_exit` kicks it out with KVM_EXIT_INTR.
"""
from __future__ import annotations

import errno
import os
import threading

from vmm.cffi_modules import load as load_cffi_module

__all__ = ["ffi", "lib", "KvmError", "KvmUnavailable", "Kvm", "Vm", "Vcpu",
           "EXIT_NAMES", "exit_name", "DEFAULT_PATH"]

DEFAULT_PATH = "/dev/kvm"


# The compiled module: installed (pip install -e .) or built on the fly (vmm/cffi_modules.py).
_mod = load_cffi_module("vmm._kvm_cffi", "vmm/kvm_build.py")
ffi = _mod.ffi
lib = _mod.lib

EXIT_NAMES = {getattr(lib, n): n[len("KVM_EXIT_"):] for n in dir(lib)
              if n.startswith("KVM_EXIT_") and n not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")}


def exit_name(reason: int) -> str:
    return EXIT_NAMES.get(reason, f"UNKNOWN_{reason}")


class KvmError(Exception):
    """A KVM ioctl failed."""

    def __init__(self, message: str, err: int = 0):
        super().__init__(message)
        self.errno = err


class KvmUnavailable(KvmError):
    """/dev/kvm is missing or unusable; the message is one line: cause and fix."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ffi.errno
        raise KvmError(f"{what}: {os.strerror(e)} (errno {e})", e)
    return ret


def _unavailable_message(path: str, e: int) -> str:
    if e == errno.ENOENT:
        return (f"{path} not found: this machine has no KVM; enable virtualization "
                f"(VT-x/AMD-V, 'modprobe kvm_intel' or 'kvm_amd') or run on a KVM host")
    if e in (errno.EACCES, errno.EPERM):
        return (f"{path}: permission denied: add yourself to the 'kvm' group "
                f"('sudo usermod -aG kvm $USER', then log in again) or run as root")
    if e in (errno.ENXIO, errno.ENODEV):
        return (f"{path}: no KVM driver behind the device node: load the module "
                f"('modprobe kvm_intel' or 'kvm_amd') or enable virtualization in the firmware")
    if e == errno.EBUSY:
        return f"{path}: busy: another hypervisor holds the virtualization hardware; stop it and retry"
    return f"{path}: cannot open ({os.strerror(e)}): check that KVM is enabled on this host"


# --------------------------------------------------------------------------
class Kvm:
    """The /dev/kvm system fd."""

    def __init__(self, path: str = DEFAULT_PATH):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmUnavailable(_unavailable_message(path, exc.errno), exc.errno) from None
        try:
            ver = lib.xomb_ioctl_int(self.fd, lib.KVM_GET_API_VERSION, 0)
            if ver < 0:
                raise KvmUnavailable(f"{path}: is not a KVM device (KVM_GET_API_VERSION failed): "
                                     f"point at the real /dev/kvm", ffi.errno)
            if ver != lib.KVM_API_VERSION:
                raise KvmUnavailable(f"{path}: KVM API version {ver}, expected "
                                     f"{lib.KVM_API_VERSION}: upgrade the host kernel")
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        self.api_version = ver
        self._mmap_size = None

    def check_extension(self, cap: int) -> int:
        r = lib.xomb_ioctl_int(self.fd, lib.KVM_CHECK_EXTENSION, cap)
        return max(r, 0)

    @property
    def vcpu_mmap_size(self) -> int:
        if self._mmap_size is None:
            self._mmap_size = _check(lib.xomb_ioctl_int(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0),
                                     "KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    _cpuid_cache: dict = {}

    def supported_cpuid(self):
        """KVM_GET_SUPPORTED_CPUID -> cdata 'struct kvm_cpuid2 *' (owned).  Asked once
        per process and device (0.5 ms on a PVM host): every VM after the first
        gets a copy."""
        cached = Kvm._cpuid_cache.get(self.path)
        if cached is not None:
            n, raw = cached
            buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
            ffi.memmove(buf, raw, len(raw))
            return buf
        n = 64
        while True:
            buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
            buf.nent = n
            if lib.xomb_ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, buf) == 0:
                size = ffi.sizeof("struct kvm_cpuid2") + buf.nent * ffi.sizeof("struct kvm_cpuid_entry2")
                Kvm._cpuid_cache[self.path] = (n, bytes(ffi.buffer(buf, size)))
                return buf
            if ffi.errno != errno.E2BIG or n > 4096:
                _check(-1, "KVM_GET_SUPPORTED_CPUID")
            n *= 2

    def create_vm(self) -> "Vm":
        fd = _check(lib.xomb_ioctl_int(self.fd, lib.KVM_CREATE_VM, 0), "KVM_CREATE_VM")
        return Vm(self, fd)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Vm:
    """A VM fd."""

    def __init__(self, kvm: Kvm, fd: int):
        self.kvm = kvm
        self.fd = fd
        self.vcpus: list[Vcpu] = []

    def check_extension(self, cap: int) -> int:
        r = lib.xomb_ioctl_int(self.fd, lib.KVM_CHECK_EXTENSION, cap)
        return max(r, 0)

    def set_user_memory_region(self, slot: int, guest_phys: int, size: int, host_addr: int,
                               flags: int = 0):
        # LAB 1 BEGIN STUB: pass
        r = ffi.new("struct kvm_userspace_memory_region *")
        r.slot, r.flags, r.guest_phys_addr = slot, flags, guest_phys
        r.memory_size, r.userspace_addr = size, host_addr
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_USER_MEMORY_REGION, r),
               f"KVM_SET_USER_MEMORY_REGION slot {slot} gpa {guest_phys:#x} size {size:#x}")
        # LAB 1 END

    def set_tss_addr(self, addr: int = 0xFFFB_D000):
        _check(lib.xomb_ioctl_int(self.fd, lib.KVM_SET_TSS_ADDR, addr), "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int = 0xFFFB_C000):
        a = ffi.new("__u64 *", addr)
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_IDENTITY_MAP_ADDR, a), "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self):
        _check(lib.xomb_ioctl_int(self.fd, lib.KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP")

    def set_msi_routes(self, routes: list[tuple[int, int, int]]):
        """KVM_SET_GSI_ROUTING: each (gsi, MSI address, MSI data)."""
        n = len(routes)
        gsi = ffi.new("uint32_t[]", [r[0] for r in routes])
        addr = ffi.new("uint32_t[]", [r[1] for r in routes])
        data = ffi.new("uint32_t[]", [r[2] for r in routes])
        _check(lib.xomb_set_msi_routes(self.fd, n, gsi, addr, data), "KVM_SET_GSI_ROUTING")

    def irqfd(self, eventfd: int, gsi: int):
        """KVM_IRQFD: a write to eventfd raises gsi, inside the kernel (no exit)."""
        _check(lib.xomb_irqfd(self.fd, eventfd, gsi), "KVM_IRQFD")

    def ioeventfd(self, addr: int, length: int, fd: int, datamatch: int | None = None,
                  pio: bool = False, deassign: bool = False):
        """Register (or deassign) an eventfd signalled by a guest write at addr."""
        e = ffi.new("struct kvm_ioeventfd *")
        e.addr, e.len, e.fd = addr, length, fd
        flags = 0
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
            e.datamatch = datamatch
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        e.flags = flags
        _check(lib.xomb_ioctl(self.fd, lib.KVM_IOEVENTFD, e), f"KVM_IOEVENTFD at {addr:#x}")

    def create_vcpu(self, index: int = 0) -> "Vcpu":
        fd = _check(lib.xomb_ioctl_int(self.fd, lib.KVM_CREATE_VCPU, index), "KVM_CREATE_VCPU")
        v = Vcpu(self, fd, index)
        self.vcpus.append(v)
        return v

    def close(self):
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vcpu:
    """A vCPU fd and its mmapped kvm_run."""

    def __init__(self, vm: Vm, fd: int, index: int):
        self.vm = vm
        self.fd = fd
        self.index = index
        self._run_size = vm.kvm.vcpu_mmap_size
        p = lib.xomb_mmap_shared(fd, self._run_size)
        if p == ffi.NULL:
            os.close(fd)
            raise KvmError(f"mmap of kvm_run failed: {os.strerror(ffi.errno)}", ffi.errno)
        self._run_raw = ffi.cast("char *", p)
        self.kvm_run = ffi.cast("struct kvm_run *", p)
        base = self._run_raw
        self.io = ffi.cast("kvm_exit_io_t *", base + lib.XOMB_KVM_RUN_IO_OFFSET)
        self.mmio = ffi.cast("kvm_exit_mmio_t *", base + lib.XOMB_KVM_RUN_MMIO_OFFSET)
        self.fail_entry = ffi.cast("kvm_exit_fail_entry_t *", base + lib.XOMB_KVM_RUN_FAIL_ENTRY_OFFSET)
        self.internal = ffi.cast("kvm_exit_internal_t *", base + lib.XOMB_KVM_RUN_INTERNAL_OFFSET)
        self.debug = ffi.cast("kvm_exit_debug_t *", base + lib.XOMB_KVM_RUN_DEBUG_OFFSET)
        self.system_event = ffi.cast("kvm_exit_system_event_t *",
                                     base + lib.XOMB_KVM_RUN_SYSTEM_EVENT_OFFSET)
        self.thread_ident: int | None = None

    # -- running ------------------------------------------------------------
    def run(self) -> int:
        """One KVM_RUN. Returns the exit reason; EINTR -> KVM_EXIT_INTR."""
        self.thread_ident = threading.get_ident()
        if lib.xomb_ioctl_int(self.fd, lib.KVM_RUN, 0) < 0:
            e = ffi.errno
            if e in (errno.EINTR, errno.EAGAIN):
                return lib.KVM_EXIT_INTR
            raise KvmError(f"KVM_RUN: {os.strerror(e)} (errno {e})", e)
        return self.kvm_run.exit_reason

    @property
    def immediate_exit(self) -> int:
        return self.kvm_run.immediate_exit

    @immediate_exit.setter
    def immediate_exit(self, v: int):
        self.kvm_run.immediate_exit = v

    def io_data(self) -> memoryview:
        """The data bytes of the current KVM_EXIT_IO (writable, in kvm_run)."""
        io = self.io
        n = io.size * io.count
        return ffi.buffer(self._run_raw + io.data_offset, n)

    def mmio_data(self):
        return ffi.buffer(self.mmio.data, 8)

    # -- state --------------------------------------------------------------
    def get_regs(self):
        r = ffi.new("struct kvm_regs *")
        _check(lib.xomb_ioctl(self.fd, lib.KVM_GET_REGS, r), "KVM_GET_REGS")
        return r

    def set_regs(self, regs=None, **kw):
        if regs is None:
            regs = self.get_regs()
        for k, v in kw.items():
            setattr(regs, k, v)
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_REGS, regs), "KVM_SET_REGS")

    def get_sregs(self):
        s = ffi.new("struct kvm_sregs *")
        _check(lib.xomb_ioctl(self.fd, lib.KVM_GET_SREGS, s), "KVM_GET_SREGS")
        return s

    def set_sregs(self, sregs):
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_SREGS, sregs), "KVM_SET_SREGS")

    def get_msrs(self, indices) -> dict[int, int]:
        indices = list(indices)
        m = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        m.nmsrs = len(indices)
        for i, idx in enumerate(indices):
            m.entries[i].index = idx
        n = _check(lib.xomb_ioctl(self.fd, lib.KVM_GET_MSRS, m), "KVM_GET_MSRS")
        return {m.entries[i].index: m.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]):
        m = ffi.new("struct kvm_msrs *", {"nmsrs": len(values), "entries": len(values)})
        m.nmsrs = len(values)
        for i, (idx, val) in enumerate(values.items()):
            m.entries[i].index, m.entries[i].data = idx, val
        n = _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_MSRS, m), "KVM_SET_MSRS")
        if n != len(values):
            bad = list(values)[n]
            raise KvmError(f"KVM_SET_MSRS: MSR {bad:#x} refused")

    def set_cpuid(self, cpuid):
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_CPUID2, cpuid), "KVM_SET_CPUID2")

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None):
        d = ffi.new("struct kvm_guest_debug *")
        d.control = control
        for i, v in enumerate(debugreg or []):
            d.arch.debugreg[i] = v
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_GUEST_DEBUG, d), "KVM_SET_GUEST_DEBUG")

    def get_vcpu_events(self):
        e = ffi.new("struct kvm_vcpu_events *")
        _check(lib.xomb_ioctl(self.fd, lib.KVM_GET_VCPU_EVENTS, e), "KVM_GET_VCPU_EVENTS")
        return e

    def set_vcpu_events(self, events):
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_VCPU_EVENTS, events), "KVM_SET_VCPU_EVENTS")

    def set_runnable(self):
        """With an in-kernel local APIC, KVM holds every vCPU but the first waiting
        for INIT/SIPI; ours start directly in long mode, so make them runnable."""
        s = ffi.new("struct kvm_mp_state *")
        s.mp_state = lib.KVM_MP_STATE_RUNNABLE
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_MP_STATE, s), "KVM_SET_MP_STATE")

    def get_mp_state(self) -> int:
        s = ffi.new("struct kvm_mp_state *")
        _check(lib.xomb_ioctl(self.fd, lib.KVM_GET_MP_STATE, s), "KVM_GET_MP_STATE")
        return s.mp_state

    def set_mp_state(self, state: int):
        s = ffi.new("struct kvm_mp_state *")
        s.mp_state = state
        _check(lib.xomb_ioctl(self.fd, lib.KVM_SET_MP_STATE, s), "KVM_SET_MP_STATE")

    def get_tsc_khz(self) -> int:
        return _check(lib.xomb_ioctl_int(self.fd, lib.KVM_GET_TSC_KHZ, 0), "KVM_GET_TSC_KHZ")

    def translate(self, va: int) -> int | None:
        """KVM_TRANSLATE with the vCPU's current CR3 (None if not mapped)."""
        t = ffi.new("struct kvm_translation *")
        t.linear_address = va
        if lib.xomb_ioctl(self.fd, lib.KVM_TRANSLATE, t) < 0 or not t.valid:
            return None
        return t.physical_address

    def close(self):
        if self.fd >= 0:
            lib.xomb_munmap(self._run_raw, self._run_size)
            os.close(self.fd)
            self.fd = -1
