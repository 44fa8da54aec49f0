"""Build the libOS and the user programs with gcc.

`build_programs(gen_dir, out_dir)` compiles every source under `libos/lib/`
once, then links each program of `libos/programs/` against those objects as
a static, freestanding x86-64 ELF executable linked at `abi.PROGRAM_VA` with
`libos/link.ld`.  The linker script makes three page-aligned PT_LOAD
segments (text R+X, rodata R, data+bss R+W) so a loader can map each page
with exactly the rights of its segment: no page is ever writable and
executable.

The result is cached: a SHA-256 over every input (sources, headers, linker
script, the generated `xomb_abi.h`, the flags and the compiler's identity)
is stored next to the outputs, and an unchanged tree runs no gcc at all.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vmm import abi, paths

PROGRAMS = ("init", "xsh", "hello", "sysconf", "faults", "bench", "dmatest", "disktest",
            "parcount", "sharedcount", "spin", "stress", "ticker", "nictest",
            "ping", "udpecho", "httpd", "nc")

CC = os.environ.get("XOMB_CC", "gcc")

# -mgeneral-regs-only: the libOS runs fault handlers *inside* the interrupted
# process and resumes it without saving SSE state, so no libOS code may touch
# the vector registers (and the kernel promises nothing about CR4.OSFXSR).
CFLAGS = [
    "-std=gnu11", "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
    "-mno-red-zone", "-fno-stack-protector", "-O2", "-Wall", "-Wextra",
    "-Wno-unused-parameter", "-Werror", "-mcmodel=small",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
    "-mgeneral-regs-only", "-fno-builtin", "-fno-tree-loop-distribute-patterns",
    "-fno-omit-frame-pointer", "-g0",
]
LDFLAGS = [
    "-ffreestanding", "-nostdlib", "-static", "-no-pie",
    "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack",
    "-Wl,--no-warn-rwx-segments", f"-Wl,--defsym=__program_va=0x{abi.PROGRAM_VA:x}",
]

STAMP = ".inputs.sha256"


class BuildError(Exception):
    """gcc (or the linker) failed; the message is the compiler's output."""


def _libos_dir() -> Path:
    return paths.LIBOS_SRC


def _inputs(src: Path, gen_dir: Path) -> list[Path]:
    files = sorted(p for p in src.rglob("*")
                   if p.is_file() and p.suffix in (".c", ".h", ".S", ".ld"))
    hdr = gen_dir / "xomb_abi.h"
    return files + [hdr]


def _compiler_identity() -> str:
    """Identify the compiler without running it (path, size, mtime)."""
    exe = shutil.which(CC)
    if exe is None:
        raise BuildError(f"compiler {CC!r} not found on PATH")
    st = Path(exe).resolve().stat()
    return f"{Path(exe).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def inputs_hash(src: Path, gen_dir: Path) -> str:
    h = hashlib.sha256()
    for p in _inputs(src, gen_dir):
        if not p.exists():
            raise BuildError(f"missing build input {p} (run `python -m vmm.abi {gen_dir}` first)")
        rel = p.relative_to(src) if p.is_relative_to(src) else Path("gen") / p.name
        h.update(str(rel).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    h.update(" ".join(CFLAGS + LDFLAGS).encode() + b"\0")
    h.update(_compiler_identity().encode())
    return h.hexdigest()


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{r.stdout}")


def build_programs(gen_dir: Path, out_dir: Path, src: Path | None = None) -> dict[str, Path]:
    """Compile the libOS and link every program; return {name: ELF path}.

    `src` defaults to the repository's `libos/` (tests pass a copy)."""
    src = Path(src) if src is not None else _libos_dir()
    gen_dir, out_dir = Path(gen_dir), Path(out_dir)
    outputs = {name: out_dir / name for name in PROGRAMS}
    digest = inputs_hash(src, gen_dir)
    stamp = out_dir / STAMP
    if (stamp.exists() and stamp.read_text().strip() == digest
            and all(p.exists() for p in outputs.values())):
        return outputs

    out_dir.mkdir(parents=True, exist_ok=True)
    incs = [f"-I{src / 'lib'}", f"-I{gen_dir}"]
    lib_sources = sorted(p for p in (src / "lib").iterdir() if p.suffix in (".c", ".S"))
    if (src / "lib" / "net").is_dir():  # the network stack (docs/NETWORK.md)
        lib_sources += sorted(p for p in (src / "lib" / "net").iterdir() if p.suffix == ".c")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".obj-") as tmp:
        objdir = Path(tmp)

        def compile_one(s: Path) -> Path:
            o = objdir / (s.parent.name + "_" + s.name + ".o")
            _run([CC, *CFLAGS, *incs, "-c", str(s), "-o", str(o)])
            return o

        prog_sources = [src / "programs" / f"{n}.c" for n in PROGRAMS]
        for p in prog_sources:
            if not p.exists():
                raise BuildError(f"missing program source {p}")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
            lib_objs = list(pool.map(compile_one, lib_sources))
            prog_objs = list(pool.map(compile_one, prog_sources))
            # crt0 must come first so the entry sits at the start of .text
            lib_objs.sort(key=lambda o: (not o.name.startswith("lib_crt0"), o.name))

            def link_one(args):
                name, obj = args
                tmp_out = objdir / name
                _run([CC, *CFLAGS, *LDFLAGS, "-T", str(src / "link.ld"),
                      "-o", str(tmp_out), *map(str, lib_objs), str(obj), "-lgcc"])
                return name, tmp_out

            linked = list(pool.map(link_one, zip(PROGRAMS, prog_objs)))
        for name, tmp_out in linked:
            os.replace(tmp_out, outputs[name])
    stamp.write_text(digest + "\n")
    return outputs


def main() -> None:   # python -m vmm.libos_build [GEN] [OUT]
    import sys
    gen = Path(sys.argv[1]) if len(sys.argv) > 1 else paths.GEN
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else paths.BUILD / "programs"
    if not (gen / "xomb_abi.h").exists():
        gen.mkdir(parents=True, exist_ok=True)
        (gen / "xomb_abi.h").write_text(abi.c_header())
        (gen / "abi.inc").write_text(abi.asm_include())
    try:
        for name, p in build_programs(gen, out).items():
            print(f"{name}: {p}")
    except BuildError as e:
        print(e, file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
