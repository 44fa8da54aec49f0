"""What kind of KVM host this is, and its TSC frequency.

PVM (`/sys/module/kvm_pvm` exists): ring-0 guest code is emulated, a ring-3
`syscall` stays in ring 3, so the kernel uses the int3 gate (abi.HOST_PVM).
Anything else with /dev/kvm is treated as VMX/SVM (abi.HOST_VMX).
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from vmm import abi

PVM_MODULE = "/sys/module/kvm_pvm"


def host_type(sys_module: str = PVM_MODULE) -> int:
    return abi.HOST_PVM if os.path.isdir(sys_module) else abi.HOST_VMX


def host_name(host: int) -> str:
    return {abi.HOST_PVM: "PVM", abi.HOST_VMX: "VMX/SVM", abi.HOST_QEMU: "QEMU"}.get(host, str(host))


def _tsc_khz_from_kvm(path: str) -> int | None:
    try:
        from vmm.kvm import Kvm, lib
        with Kvm(path) as kvm:
            if not kvm.check_extension(lib.KVM_CAP_GET_TSC_KHZ):
                return None
            vm = kvm.create_vm()
            try:
                return vm.create_vcpu(0).get_tsc_khz() or None
            finally:
                vm.close()
    except Exception:
        return None


def _tsc_khz_from_proc(cpuinfo: str = "/proc/cpuinfo") -> int | None:
    try:
        with open("/sys/devices/system/cpu/cpu0/tsc_freq_khz") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)
    return int(float(m.group(1)) * 1000) if m else None


@functools.lru_cache(maxsize=None)
def tsc_khz(kvm_path: str = "/dev/kvm") -> int:
    """The guest-visible TSC frequency in kHz (KVM_GET_TSC_KHZ, else /proc), 0 if unknown."""
    return _tsc_khz_from_kvm(kvm_path) or _tsc_khz_from_proc() or 0


@dataclass
class HostInfo:
    host: int
    tsc_khz: int

    @property
    def name(self) -> str:
        return host_name(self.host)


def detect(kvm_path: str = "/dev/kvm") -> HostInfo:
    return HostInfo(host_type(), tsc_khz(kvm_path))
