"""The build orchestrator: ABI headers, then the kernel (keystone) and the programs (gcc).

``build_all()`` writes ``build/gen/xomb_abi.h`` and ``build/gen/abi.inc`` from
:mod:`vmm.abi` (rewriting a file only when its content changed, so the sub-builds'
content hashes stay valid), then calls ``kernel_build.build_kernel`` and
``libos_build.build_programs``.  Both cache by content hash themselves; ``force=True``
removes their output directories first so everything is rebuilt.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import abi, paths


class BuildError(Exception):
    """A sub-build failed (the message names which and carries the tool's output)."""


@dataclass
class Artifacts:
    kernel: object                      # kernel_build.KernelImage
    programs: dict[str, bytes]          # name -> static ELF64 bytes
    report: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


GENERATED = {"xomb_abi.h": abi.c_header, "abi.inc": abi.asm_include}


def write_if_changed(path: Path, text: str) -> bool:
    """Write text to path unless it already holds exactly that; True if written."""
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)               # atomic: a parallel reader never sees half a header
    return True


def generate_abi(gen_dir: Path | None = None) -> list[Path]:
    """Write the generated ABI files; returns the ones that changed."""
    gen_dir = Path(gen_dir or paths.GEN)
    changed = []
    for name, make in GENERATED.items():
        p = gen_dir / name
        if write_if_changed(p, make()):
            changed.append(p)
    return changed


def _size(n: int) -> str:
    return f"{n:>9,} bytes"


def build_all(force: bool = False) -> Artifacts:
    t0 = time.perf_counter()
    gen = paths.GEN
    kdir, pdir = paths.BUILD / "kernel", paths.BUILD / "programs"
    if force:
        for d in (kdir, pdir):
            shutil.rmtree(d, ignore_errors=True)
    changed = generate_abi(gen)
    report = [f"abi         {gen}  ({'updated: ' + ', '.join(p.name for p in changed) if changed else 'unchanged'})"]

    from . import kernel_build, libos_build
    t = time.perf_counter()
    try:
        kernel = kernel_build.build_kernel(gen, kdir)
    except kernel_build.KernelBuildError as e:
        raise BuildError(f"kernel: {e}") from None
    try:                                # kernel.sym.elf for gdb (docs/GDB.md); optional
        from .symfile import kernel_sym_elf_if_stale
        kernel_sym_elf_if_stale(kernel.symbols, kdir)
    except Exception:
        pass
    report.append(f"kernel      {_size(len(kernel.image))}  {kdir / 'kernel.bin'}  "
                  f"({time.perf_counter() - t:.2f} s)")
    t = time.perf_counter()
    try:
        elf_paths = libos_build.build_programs(gen, pdir)
    except libos_build.BuildError as e:
        raise BuildError(f"programs: {e}") from None
    programs = {}
    for name, p in elf_paths.items():
        programs[name] = Path(p).read_bytes()
        report.append(f"{name:<11} {_size(len(programs[name]))}  {p}")
    report.append(f"programs    {len(programs)} built in {time.perf_counter() - t:.2f} s")
    report.append(f"total       {time.perf_counter() - t0:.2f} s")
    return Artifacts(kernel=kernel, programs=programs, report=report,
                     paths={"kernel": kdir / "kernel.bin", **{n: Path(p) for n, p in
                                                               elf_paths.items()}})


if __name__ == "__main__":      # python -m vmm.build [--force]
    import sys
    a = build_all(force="--force" in sys.argv)
    print("\n".join(a.report))
