"""The QEMU boot path, host side: the same kernel image under ``qemu-system-x86_64 -accel tcg``.

QEMU loads the kernel through its multiboot header (flat image, a.out kludge) and the boot
state as a multiboot module: ``-kernel kernel.bin -initrd blob`` where the blob is
``BootState.blob()`` built for ``HOST_QEMU`` with the same RAM size as ``-m``.  The kernel's
32-bit stub (kernel_asm/boot32.s) copies the module to ``BOOTINFO_PHYS``, zeroes its
source, enters long mode on ``KT_BOOT_PML4`` and joins ``kernel_start64``.  Console and exit
go through COM1 (``-serial stdio``) and ``isa-debug-exit`` at ``PANIC_PORT`` (QEMU's exit
code is ``(value << 1) | 1``); boot info's ``iomap_base`` opens both ports to ring 3.

QEMU's multiboot loader places modules after the image's ``bss_end_addr`` (16 MiB): the blob
must fit below that once copied to ``BOOTINFO_PHYS``, hence :data:`BLOB_MAX`.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import abi

QEMU_RAM = 128 << 20
MB_BSS_END = 16 << 20                       # the kernel's multiboot bss_end_addr
BLOB_MAX = MB_BSS_END - abi.BOOTINFO_PHYS    # 14 MiB
DEBUG_EXIT = f"isa-debug-exit,iobase={abi.PANIC_PORT:#x},iosize=2"


class QemuError(RuntimeError):
    """QEMU is missing, timed out, or stopped without a debug-exit; ``output`` is the
    serial output so far."""

    def __init__(self, message: str, output: str = "", returncode: int | None = None):
        super().__init__(message)
        self.output = output
        self.returncode = returncode

    def __str__(self) -> str:
        s = super().__str__()
        if self.output:
            tail = self.output[-2000:]
            s += "\n--- serial output (tail) ---\n" + tail
        return s


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def qemu_command(kernel_bin: Path, blob: Path, ram_bytes: int = QEMU_RAM,
                 qemu: str | None = None, extra: list[str] | tuple = ()) -> list[str]:
    """The command line (serial on stdio, no display, no reboot: a triple fault exits)."""
    return [qemu or qemu_binary() or "qemu-system-x86_64",
            "-accel", "tcg", "-cpu", "max", "-m", f"{ram_bytes >> 20}M",
            "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
            "-serial", "stdio", "-device", DEBUG_EXIT,
            "-kernel", str(kernel_bin), "-initrd", str(blob), *extra]


def prepare(workdir: Path, cmdline: str = "", run_mode: int = 1, ram_bytes: int = QEMU_RAM,
            artifacts=None) -> tuple[Path, Path]:
    """Build everything and write ``kernel.bin`` and ``boot.blob`` into workdir."""
    from .bootimage import ImageError, build_boot_state
    if artifacts is None:
        from .build import build_all
        artifacts = build_all()
    state = build_boot_state(artifacts.kernel, artifacts.programs, ram_bytes=ram_bytes,
                             host=abi.HOST_QEMU, cmdline=cmdline, run_mode=run_mode)
    blob = state.blob()
    if len(blob) > BLOB_MAX:
        raise ImageError(f"QEMU boot blob is {len(blob):#x} bytes; it must stay below "
                         f"{BLOB_MAX:#x} (copied to BOOTINFO_PHYS under the 16 MiB bss_end)"
                         f": use less RAM")
    kbin, bpath = workdir / "kernel.bin", workdir / "boot.blob"
    kbin.write_bytes(artifacts.kernel.image)
    bpath.write_bytes(blob)
    return kbin, bpath


def run_qemu(cmdline: str = "", run_mode: int = 1, timeout: float = 60.0, *,
             ram_bytes: int = QEMU_RAM, artifacts=None, input: bytes = b"",
             extra: list[str] | tuple = ()) -> tuple[int, str]:
    """Boot under QEMU TCG; return ``(status, serial_output)`` where status is the value the
    guest wrote to the debug-exit port (QEMU exit code ``(status << 1) | 1``).

    Raises :class:`QemuError` if QEMU is missing, the run exceeds ``timeout`` seconds, or
    QEMU stops any other way (exit code even: a triple fault with ``-no-reboot`` gives 0)."""
    qemu = qemu_binary()
    if qemu is None:
        raise QemuError("qemu-system-x86_64 not found on PATH")
    with tempfile.TemporaryDirectory(prefix="xomb-qemu-") as d:
        kbin, blob = prepare(Path(d), cmdline, run_mode, ram_bytes, artifacts)
        cmd = qemu_command(kbin, blob, ram_bytes, qemu, extra)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise QemuError(f"QEMU did not exit within {timeout:.0f} s",
                            out.decode(errors="replace")) from None
        text = out.decode(errors="replace")
        rc = proc.returncode
        errtext = err.decode(errors="replace")
        failed_start = rc == 1 and any(
            "qemu" in line and "warning" not in line.lower() for line in errtext.splitlines())
        if rc > 0 and rc & 1 and not failed_start:
            return rc >> 1, text
        why = ("stopped without a debug-exit (triple fault or shutdown)" if rc == 0 else
               f"exited with {rc}")
        msg = f"QEMU {why} after {time.monotonic() - t0:.1f} s"
        if errtext.strip():
            msg += f"; stderr: {errtext.strip()[-1000:]}"
        raise QemuError(msg, text, rc)
