"""An ELF with the kernel's symbols, for gdb's `symbol-file` (the kernel is a flat image).

    python -m vmm.symfile            -> build/kernel/kernel.sym.elf

A `.s` of `.globl name; .set name, 0xADDR` lines assembled by the system `as` (absolute
symbols: gdb resolves `break sys_map`, `x/i $pc` shows `<sys_map+7>`).  The programs are
already ELFs with symbols in build/programs/ (`add-symbol-file build/programs/xsh`).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from vmm import paths

_NAME = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$]*$")


def write_sym_elf(symbols: dict[str, int], out: Path) -> Path:
    """Function symbols in a .text section placed (by ld) at the lowest address: gdb wants
    code symbols in a section, absolute ones cannot take a breakpoint."""
    syms = sorted(((a, n) for n, a in symbols.items()
                   if ":" not in n and _NAME.match(n) and a >= (1 << 63)), key=lambda t: t)
    if not syms:
        raise RuntimeError("no kernel-half symbols")
    base = syms[0][0] & ~0xFFF
    size = syms[-1][0] - base + 0x1000
    lines = [".text", "__sym_base:"]
    for addr, name in syms:
        lines.append(f".globl {name}\n.type {name}, @function\n.set {name}, __sym_base + {addr - base:#x}")
    lines.append(f".skip {size:#x}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".s")
    obj = out.with_suffix(".o")
    src.write_text("\n".join(lines) + "\n")
    asm, ld = shutil.which("as"), shutil.which("ld")
    if asm is None or ld is None:
        raise RuntimeError("no assembler/linker (as, ld) to build the symbol file")
    subprocess.run([asm, "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run([ld, "-nostdlib", "-e", "0", f"-Ttext={base:#x}", "-o", str(out), str(obj)],
                   check=True, capture_output=True)
    obj.unlink()
    return out


def kernel_sym_elf(symbols: dict[str, int] | None = None) -> Path:
    out = paths.BUILD / "kernel" / "kernel.sym.elf"
    if symbols is None:
        import json
        symbols = json.loads((paths.BUILD / "kernel" / "kernel.json").read_text())["symbols"]
    return write_sym_elf({k: v for k, v in symbols.items() if ":" not in k}, out)


def kernel_sym_elf_if_stale(symbols: dict[str, int], kdir: Path) -> Path | None:
    """Called by the build: (re)write kdir/kernel.sym.elf when kernel.bin is newer."""
    out = Path(kdir) / "kernel.sym.elf"
    binf = Path(kdir) / "kernel.bin"
    if out.exists() and binf.exists() and out.stat().st_mtime >= binf.stat().st_mtime:
        return out
    if not shutil.which("as") or not shutil.which("ld"):
        return None
    return write_sym_elf({k: v for k, v in symbols.items() if ":" not in k}, out)


if __name__ == "__main__":
    print(kernel_sym_elf())
