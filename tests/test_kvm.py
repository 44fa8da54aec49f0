"""The cffi KVM binding: error messages, struct layouts, a real VM when possible."""
import errno
import os

import pytest

from conftest import requires_kvm
from vmm import hostinfo, abi
from vmm.kvm import Kvm, KvmUnavailable, KvmError, ffi, lib, exit_name


def test_missing_device_is_one_clear_line(tmp_path):
    with pytest.raises(KvmUnavailable) as ei:
        Kvm(str(tmp_path / "kvm"))
    msg = str(ei.value)
    assert "\n" not in msg
    assert "not found" in msg and "KVM" in msg
    assert ei.value.errno == errno.ENOENT


def test_permission_denied_message(monkeypatch):
    def deny(path, flags, *a):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(KvmUnavailable) as ei:
        Kvm("/dev/kvm")
    msg = str(ei.value)
    assert "permission denied" in msg and "'kvm' group" in msg and "\n" not in msg


def test_not_a_kvm_device():
    with pytest.raises(KvmUnavailable, match="not a KVM device"):
        Kvm("/dev/null")


def test_layouts_come_from_the_header():
    assert ffi.sizeof("struct kvm_regs") == 18 * 8
    assert ffi.sizeof("struct kvm_sregs") == 312
    assert ffi.sizeof("struct kvm_segment") == 24
    assert lib.XOMB_KVM_RUN_IO_OFFSET == lib.XOMB_KVM_RUN_MMIO_OFFSET == 32
    assert ffi.offsetof("kvm_exit_mmio_t", "len") == 16
    assert lib.KVM_RUN == 0xAE80
    assert exit_name(lib.KVM_EXIT_MMIO) == "MMIO"
    assert exit_name(12345) == "UNKNOWN_12345"


def test_host_type_detection(tmp_path):
    assert hostinfo.host_type(str(tmp_path / "nope")) == abi.HOST_VMX
    (tmp_path / "kvm_pvm").mkdir()
    assert hostinfo.host_type(str(tmp_path / "kvm_pvm")) == abi.HOST_PVM
    assert hostinfo.host_name(abi.HOST_PVM) == "PVM"


@requires_kvm
def test_real_kvm_objects():
    with Kvm() as kvm:
        assert kvm.api_version == 12
        assert kvm.vcpu_mmap_size >= 4096
        cpuid = kvm.supported_cpuid()
        assert cpuid.nent > 0
        vm = kvm.create_vm()
        try:
            v = vm.create_vcpu(0)
            regs = v.get_regs()
            v.set_regs(regs, rip=0x1234)
            assert v.get_regs().rip == 0x1234
            s = v.get_sregs()
            v.set_sregs(s)
            assert v.get_tsc_khz() > 0
            with pytest.raises(KvmError):
                vm.create_vcpu(0)           # same id twice
        finally:
            vm.close()


@requires_kvm
def test_tsc_khz():
    assert hostinfo.tsc_khz() > 100_000
