"""The QEMU (TCG, multiboot) boot path, host side.

* a probe kernel (a few 32-bit instructions assembled here) checks what QEMU hands over:
  the module is the boot blob, loaded above the 16 MiB bss_end, at its full size; it
  reports through COM1 and isa-debug-exit, exercising run_qemu end to end;
* the real kernel + libOS run ``sysconf`` and must report 0 failed (this needs the
  kernel and the libOS to be complete).
"""
import re
import shutil
from dataclasses import dataclass, field

import pytest

from vmm import abi, qemu

pytestmark = pytest.mark.qemu

needs_qemu = pytest.mark.skipif(qemu.qemu_binary() is None,
                                reason="qemu-system-x86_64 is not installed "
                                       "(apt-get install qemu-system-x86)")


def test_command_line(tmp_path):
    cmd = qemu.qemu_command(tmp_path / "k.bin", tmp_path / "b.blob", 128 << 20,
                            qemu="qemu-system-x86_64")
    s = " ".join(cmd)
    assert "-accel tcg" in s and "-m 128M" in s and "-no-reboot" in s
    assert f"-kernel {tmp_path / 'k.bin'}" in s and f"-initrd {tmp_path / 'b.blob'}" in s
    assert "isa-debug-exit,iobase=0x501,iosize=2" in s and "-serial stdio" in s
    assert qemu.BLOB_MAX == 14 << 20


# --------------------------------------------------------------------------
# probe kernel
# --------------------------------------------------------------------------
@dataclass
class ProbeKernel:
    image: bytes
    symbols: dict = field(default_factory=lambda: {"syscall_entry": abi.KBASE + 0x100000})
    entry64: int = abi.KBASE + 0x100000
    mb_entry: int = 0x100020
    stack_tops: list = field(default_factory=lambda: [abi.KBASE + 0x110000])
    gdt: int = 0
    gdt_limit: int = 0
    idt: int = 0
    idt_limit: int = 0
    tss: list = field(default_factory=lambda: [0])
    tss_limit: int = 0x67


@dataclass
class Built:
    kernel: ProbeKernel
    programs: dict


MB_FLAGS = 0x00010003


def probe_image(blob_len: int) -> bytes:
    ks = pytest.importorskip("keystone")
    magic = 0x1BADB002
    src = f"""
        .long {magic}
        .long {MB_FLAGS}
        .long {(-(magic + MB_FLAGS)) & 0xFFFFFFFF}
        .long 0x100000
        .long 0x100000
        .long 0
        .long {qemu.MB_BSS_END}
        .long 0x100020
    entry:
        mov esi, dword ptr [ebx + 24]
        mov eax, dword ptr [esi]
        mov ecx, dword ptr [esi + 4]
        sub ecx, eax
        mov bl, 1
        cmp dword ptr [eax], {abi.BOOTINFO_MAGIC & 0xFFFFFFFF}
        jne done
        cmp dword ptr [eax + 4], {abi.BOOTINFO_MAGIC >> 32}
        jne done
        mov bl, 2
        cmp eax, {qemu.MB_BSS_END}
        jb done
        mov bl, 3
        cmp ecx, {blob_len}
        jne done
        mov dx, {abi.COM1}
        mov al, 0x4f
        out dx, al
        mov al, 0x4b
        out dx, al
        mov al, 10
        out dx, al
        mov bl, 42
    done:
        mov al, bl
        mov dx, {abi.PANIC_PORT}
        out dx, al
        hlt
    """
    enc, _ = ks.Ks(ks.KS_ARCH_X86, ks.KS_MODE_32).asm(src, 0x100000)
    return bytes(enc)


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    import subprocess
    d = tmp_path_factory.mktemp("qemu_elf")
    (d / "init.c").write_text("void _start(void) { for (;;) __asm__ volatile(\"pause\"); }\n")
    subprocess.run(["gcc", "-O1", "-nostdlib", "-static", "-no-pie", "-fno-pic",
                    "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096", "-o", str(d / "init"),
                    str(d / "init.c")], check=True)
    return (d / "init").read_bytes()


@needs_qemu
def test_probe_kernel_sees_the_blob(tiny_init):
    from vmm.bootimage import build_boot_state
    programs = {"init": tiny_init}
    placeholder = ProbeKernel(image=probe_image(0))
    blob_len = len(build_boot_state(placeholder, programs, qemu.QEMU_RAM, abi.HOST_QEMU,
                                    cmdline="probe").blob())
    assert 0 < blob_len <= qemu.BLOB_MAX
    built = Built(ProbeKernel(image=probe_image(blob_len)), programs)
    status, out = qemu.run_qemu("probe", run_mode=1, timeout=60, artifacts=built)
    assert status == 42, {1: "module is not the boot blob (no BOOTINFO magic)",
                          2: "module loaded below bss_end",
                          3: "module size differs from the blob"}.get(status, status)
    assert out.strip() == "OK"


@needs_qemu
def test_qemu_triple_fault_is_an_error(tiny_init):
    """A kernel that crashes (jumps to nowhere) makes run_qemu raise, not hang or lie."""
    ks = pytest.importorskip("keystone")
    magic = 0x1BADB002
    enc, _ = ks.Ks(ks.KS_ARCH_X86, ks.KS_MODE_32).asm(f"""
        .long {magic}
        .long {MB_FLAGS}
        .long {(-(magic + MB_FLAGS)) & 0xFFFFFFFF}
        .long 0x100000
        .long 0x100000
        .long 0
        .long {qemu.MB_BSS_END}
        .long 0x100020
        lidt [0x100040]
        int 3
        .align 64
        .word 0
        .long 0
    """, 0x100000)
    built = Built(ProbeKernel(image=bytes(enc)), {"init": tiny_init})
    with pytest.raises(qemu.QemuError, match="without a debug-exit"):
        qemu.run_qemu("", timeout=60, artifacts=built)


def test_blob_limit_enforced(tiny_init, tmp_path, monkeypatch):
    from vmm.bootimage import ImageError
    monkeypatch.setattr(qemu, "BLOB_MAX", 4096)
    built = Built(ProbeKernel(image=probe_image(0)), {"init": tiny_init})
    with pytest.raises(ImageError, match="below"):
        qemu.prepare(tmp_path, artifacts=built)


# --------------------------------------------------------------------------
# the real thing
# --------------------------------------------------------------------------
@needs_qemu
def test_sysconf_under_qemu():
    """The real kernel and libOS under QEMU TCG: sysconf's summary says 0 failed."""
    status, out = qemu.run_qemu("sysconf", run_mode=1, timeout=300)
    m = re.findall(r"(\d+) passed, (\d+) failed", out)
    assert m, f"no sysconf summary in the serial output:\n{out[-3000:]}"
    passed, failed = map(int, m[-1])
    assert failed == 0 and passed > 0, out[-3000:]
    assert status == 0, f"exit status {status}\n{out[-3000:]}"
