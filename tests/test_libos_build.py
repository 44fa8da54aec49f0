"""Build tests for the libOS and its programs (need only gcc and pyelftools)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from vmm import abi, libos_build, paths

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gen")
    (d / "xomb_abi.h").write_text(abi.c_header())
    (d / "abi.inc").write_text(abi.asm_include())
    return d


@pytest.fixture(scope="module")
def built(gen, tmp_path_factory) -> dict[str, Path]:
    return libos_build.build_programs(gen, tmp_path_factory.mktemp("programs"))


def test_every_program_builds(built):
    assert set(built) == set(libos_build.PROGRAMS) >= {"init", "xsh", "hello", "sysconf", "faults",
                                                        "bench", "dmatest", "disktest"}
    for p in built.values():
        assert p.exists() and p.stat().st_size > 0


@pytest.mark.parametrize("name", libos_build.PROGRAMS)
def test_elf_shape(built, name):
    with open(built[name], "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf.little_endian
        assert elf["e_machine"] == "EM_X86_64"
        assert elf["e_type"] == "ET_EXEC"
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert len(loads) == 3, "text, rodata, data"
        lo = min(s["p_vaddr"] for s in loads)
        hi = max(s["p_vaddr"] + s["p_memsz"] for s in loads)
        assert lo == abi.PROGRAM_VA
        assert abi.PROGRAM_VA <= elf["e_entry"] < hi
        assert hi <= abi.INITRD_VA
        exec_segs = []
        prev_end = 0
        for s in sorted(loads, key=lambda s: s["p_vaddr"]):
            flags = s["p_flags"]
            assert flags & P_FLAGS.PF_R
            assert not (flags & P_FLAGS.PF_W and flags & P_FLAGS.PF_X), "W+X segment"
            assert s["p_vaddr"] % abi.PAGE == 0 and s["p_offset"] % abi.PAGE == 0
            assert s["p_filesz"] <= s["p_memsz"]
            assert s["p_vaddr"] >= prev_end, "segments share a page"
            prev_end = (s["p_vaddr"] + s["p_memsz"] + abi.PAGE - 1) & ~(abi.PAGE - 1)
            if flags & P_FLAGS.PF_X:
                exec_segs.append(s)
        assert any(s["p_vaddr"] <= elf["e_entry"] < s["p_vaddr"] + s["p_memsz"] for s in exec_segs)
        rights = sorted(s["p_flags"] for s in loads)
        assert rights == sorted([P_FLAGS.PF_R | P_FLAGS.PF_X, P_FLAGS.PF_R,
                                 P_FLAGS.PF_R | P_FLAGS.PF_W])


def test_entry_is_crt0(built):
    with open(built["hello"], "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name("_start")[0]
        assert sym["st_value"] == elf["e_entry"] == abi.PROGRAM_VA


def test_programs_accepted_by_the_vmm_loader(built):
    """The VMM's own ELF reader (bootimage.load_elf) takes every program."""
    bootimage = pytest.importorskip("vmm.bootimage")
    for name, p in built.items():
        prog = bootimage.load_elf(name, p.read_bytes())
        assert prog.entry == abi.PROGRAM_VA


def test_cache_skips_gcc(gen, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = libos_build.build_programs(gen, out)
    stamps = {n: p.stat().st_mtime_ns for n, p in first.items()}
    calls = []
    real_run = subprocess.run

    def spy(cmd, *a, **k):
        calls.append(cmd)
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(libos_build.subprocess, "run", spy)
    second = libos_build.build_programs(gen, out)
    assert calls == []
    assert second == first
    assert {n: p.stat().st_mtime_ns for n, p in second.items()} == stamps


def test_cache_notices_changes(gen, tmp_path, monkeypatch):
    src = tmp_path / "libos"
    shutil.copytree(paths.LIBOS_SRC, src)
    out = tmp_path / "out"
    libos_build.build_programs(gen, out, src=src)
    h1 = (out / libos_build.STAMP).read_text()
    hello = src / "programs" / "hello.c"
    hello.write_text(hello.read_text() + "\n/* changed */\n")
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(libos_build.subprocess, "run",
                        lambda cmd, *a, **k: (calls.append(cmd), real_run(cmd, *a, **k))[1])
    libos_build.build_programs(gen, out, src=src)
    assert calls, "a changed source must rebuild"
    assert (out / libos_build.STAMP).read_text() != h1
    # the generated ABI header is an input too
    gen2 = tmp_path / "gen2"
    shutil.copytree(gen, gen2)
    (gen2 / "xomb_abi.h").write_text(abi.c_header() + "\n/* regenerated */\n")
    calls.clear()
    libos_build.build_programs(gen2, out, src=src)
    assert calls


def test_syntax_error_raises_build_error(gen, tmp_path):
    src = tmp_path / "libos"
    shutil.copytree(paths.LIBOS_SRC, src)
    bad = src / "programs" / "hello.c"
    bad.write_text(bad.read_text() + "\nint broken( {\n")
    with pytest.raises(libos_build.BuildError) as e:
        libos_build.build_programs(gen, tmp_path / "out", src=src)
    msg = str(e.value)
    assert "hello.c" in msg and "error" in msg


def test_missing_abi_header_is_a_build_error(tmp_path):
    with pytest.raises(libos_build.BuildError, match="xomb_abi.h"):
        libos_build.build_programs(tmp_path / "nogen", tmp_path / "out")


def test_no_abi_address_copied():
    """The libOS takes every shared address from xomb_abi.h: none of the
    ABI's (large) virtual addresses is written out in the sources."""
    import re
    values = {v for k, v in vars(abi).items()
              if k.isupper() and isinstance(v, int) and v >= 0x100000 and k.endswith("_VA")}
    for p in paths.LIBOS_SRC.rglob("*"):
        if p.suffix in (".c", ".h", ".S", ".ld"):
            for lit in re.findall(r"\b0x[0-9a-fA-F]+", p.read_text()):
                assert int(lit, 16) not in values, f"{p.name} hard-codes {lit}"
