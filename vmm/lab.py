"""Teaching labs with an auto-grader (docs/labs/README.md).

A lab is a set of regions of the real sources, marked in comments, that a
student writes, and a set of graded tests.  ``xomb-vmm lab new N DIR`` copies
the sources into a workspace with lab N's regions replaced by stubs;
``xomb-vmm lab grade N [DIR]`` builds and boots that workspace and scores it.

The marker convention (one marker per line, the line holds nothing else but
the comment):

    C, .S, kernel .s:     /* LAB 3 BEGIN */  ...  /* LAB 3 END */
    with a stub:          /* LAB 3 BEGIN STUB: return 0; */  ...  /* LAB 3 END */
    Python:               # LAB 3 BEGIN [STUB: pass]  ...  # LAB 3 END

Everything from the BEGIN line to the END line (both included) becomes, at the
BEGIN line's indentation, ``/* LAB 3: your code here */`` (``#`` in Python)
followed by the STUB code on its own line, if the marker has one.  The stub
must keep the workspace building.  Regions of other labs stay as they are
(they are the solutions of the labs before).  Regions do not nest; a BEGIN
without its END, an END without its BEGIN, or an END of another lab is an
error that names the file and the line.

The labs and their tests are the table ``LABS`` below: ``lab list``, ``lab
grade`` and tests/test_lab.py all read it.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths


class LabError(Exception):
    """A bad lab number, workspace or marker (one-line message)."""


# --------------------------------------------------------------------------
# The labs
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class LabTest:
    name: str
    points: int
    command: tuple[str, ...]            # xomb-vmm arguments, e.g. ("run", "sysconf")
    match: tuple[str, ...] = ()         # regexes (re.MULTILINE) that must match the console
    no_match: tuple[str, ...] = ()      # regexes that must not match
    status: int | None = None           # the expected exit status (None: any)
    timeout: float = 60.0
    exercise: int = 0                   # the exercise it grades (0: the lab as a whole)
    # A gdb check: the command (e.g. ("boot",)) is started with --gdb HOST:PORT --wait-gdb,
    # gdb -batch runs these commands after `target remote` (then `kill`), and the regexes
    # are matched against gdb's output followed by the VMM's.
    gdb: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lab:
    number: int
    title: str
    handout: str
    tests: tuple[LabTest, ...] = field(default_factory=tuple)
    exercises: tuple[str, ...] = ()     # exercise k's title is exercises[k - 1]

    @property
    def points(self) -> int:
        return sum(t.points for t in self.tests)

    def exercise_name(self, k: int) -> str:
        if 1 <= k <= len(self.exercises):
            return self.exercises[k - 1]
        return "the lab as a whole"


SYSCONF = ("run", "sysconf")
HELLO = ("run", "hello", "alpha", "beta")
DISK = "{disk}"                         # grading puts a fresh disk image here (xomb-vmm mkfs)

# gdb commands of the labs' gdb checks (each prints one "name value" line to match)
PHYS = ("monitor phys on",)             # memory reads at guest-physical addresses
FIRST_INSTRUCTION = (
    "info symbol $pc",
    'printf "cr0.pg_pe %#x\\n", $cr0 & 0x80000001',
    'printf "cr4.pae %#x\\n", $cr4 & 0x20',
    'printf "efer.lme_lma %#x\\n", $efer & 0x500',
    'printf "efer.nxe %#x\\n", $efer & 0x800',
    *PHYS,
    'printf "cr3.is_a_root %d\\n", (*(unsigned long *)($cr3 + 510 * 8) & 0xffffffffff000) == $cr3',
)
SELF_MAP = (
    *PHYS,
    'printf "selfmap.root %d\\n", (*(unsigned long *)($cr3 + 510 * 8) & 0xffffffffff000) == $cr3',
    'printf "selfmap.rights %#lx\\n", *(unsigned long *)($cr3 + 510 * 8) & 0x8000000000000007',
)
INIT_TABLES = (                        # walk init's tables for 0x400000 by hand, physically
    *PHYS,
    "set $l4 = *(unsigned long *)($cr3 + 0 * 8)",
    "set $l3 = *(unsigned long *)(($l4 & 0xffffffffff000) + 0 * 8)",
    "set $l2 = *(unsigned long *)(($l3 & 0xffffffffff000) + 2 * 8)",
    "set $l1 = *(unsigned long *)(($l2 & 0xffffffffff000) + 0 * 8)",
    'printf "tables.upper %#lx %#lx %#lx\\n", $l4 & 7, $l3 & 7, $l2 & 7',
    'printf "tables.leaf_0x400000 %#lx\\n", $l1 & 0x8000000000000007',
)
WALK = ("monitor vtop 0x400000", "monitor vtop 0x500000000000")

LABS: dict[int, Lab] = {lab.number: lab for lab in (
    Lab(1, "Boot and the VMM", "docs/labs/lab1.md", (
        LabTest("first-instruction", 15, ("boot",), gdb=FIRST_INSTRUCTION, exercise=2, timeout=30,
                match=(r"^kernel_start64 in section \.text", r"^cr0\.pg_pe 0x80000001$",
                       r"^cr4\.pae 0x20$", r"^efer\.lme_lma 0x500$", r"^efer\.nxe 0x800$",
                       r"^cr3\.is_a_root 1$")),
        LabTest("first-step", 10, ("boot",), gdb=("stepi", "info symbol $pc"), exercise=1,
                timeout=30, match=(r"^kernel_start64 \+ 7 in section \.text",),
                no_match=(r"^Remote connection closed",)),
        LabTest("boot-hello", 15, HELLO, exercise=1, status=0,
                match=(r"^Hello from hello!$", r'argv\[2\] = "beta"')),
        LabTest("two-cpus", 10, ("run", "--cpus", "2", "hello"), status=0,
                match=(r"^Hello from hello!$",), no_match=(r"panic",)),
    ), exercises=("the memory slot (vmm/kvm.py)", "the first register state (vmm/bootimage.py)")),
    Lab(2, "Page tables and the self-map", "docs/labs/lab2.md", (
        LabTest("init-tables", 10, ("boot",), gdb=INIT_TABLES, exercise=1, timeout=30,
                match=(r"^tables\.upper 0x7 0x7 0x7$", r"^tables\.leaf_0x400000 0x5$")),
        LabTest("init-address-space", 10, HELLO, exercise=1, status=0,
                match=(r"^Hello from hello!$",)),
        LabTest("self-map-entry", 10, ("boot",), gdb=SELF_MAP, exercise=2, timeout=30,
                match=(r"^selfmap\.root 1$", r"^selfmap\.rights 0x8000000000000005$")),
        LabTest("self-map-libos", 10, SYSCONF, exercise=2,
                match=(r"^PASS create\.level3\.installed$", r"^PASS map\.move\.source_gone$",
                       r"^PASS release\.unmap\.gone$")),
        LabTest("walk", 10, ("boot",), gdb=WALK, exercise=3, timeout=30,
                match=(r"^  -> pa 0x[0-9a-f]+ \(4K page, r-x u\)",
                       r"^  -> not mapped: level-4 entry not present$")),
        LabTest("sysconf-clean", 5, SYSCONF, status=0,
                match=(r"^sysconf: \d+ passed, 0 failed$",), no_match=(r"^FAIL ",)),
    ), exercises=("building tables on the host (vmm/pagetable.py PageTables.table)",
                  "the self-map entry (vmm/bootimage.py kernel_half)",
                  "walking tables from the host (vmm/pagetable.py walk)")),
    Lab(3, "System calls and upcalls", "docs/labs/lab3.md", (
        LabTest("syscall-reflect", 10, SYSCONF, exercise=2,
                match=(r"^PASS syscall\.reflected$", r"^PASS syscall\.reflected\.registers$",
                       r"^PASS syscall\.reflected\.returns$")),
        LabTest("fault-upcall", 15, SYSCONF, exercise=1,
                match=(r"^PASS fault\.upcall$", r"^PASS fault\.cr2$", r"^PASS fault\.resume$",
                       r"^PASS fault\.resume_read$")),
        LabTest("sysconf-clean", 10, SYSCONF,
                match=(r"^sysconf: \d+ passed, 0 failed$",), no_match=(r"^FAIL ",), status=0),
        LabTest("faults-contained", 5, ("run", "faults"),
                match=(r"^faults: \d+ attacks, 0 not stopped$",), no_match=(r"NOT STOPPED",),
                status=0),
    ), exercises=("upcall dispatch (libos/lib/upcall.c)", "sys_reflect (kernel_asm/entry.s)")),
    Lab(4, "The libOS: allocator and spawn", "docs/labs/lab4.md", (
        LabTest("malloc", 10, SYSCONF, match=(r"^PASS libos\.malloc$",)),
        LabTest("malloc-reuse", 15, SYSCONF, exercise=1,
                match=(r"^PASS libos\.malloc\.reuse$", r"^PASS libos\.malloc\.reuse_freed$")),
        LabTest("malloc-coalesce", 10, SYSCONF, exercise=2,
                match=(r"^PASS libos\.malloc\.coalesce$",)),
        LabTest("spawn-hello", 10, HELLO,
                match=(r"^Hello from hello!$", r'argv\[2\] = "beta"'), status=0),
        LabTest("exit-status", 5, ("run", "hello", "--status", "7"), status=7),
    ), exercises=("free (libos/lib/malloc.c)", "coalescing in insert_free (libos/lib/malloc.c)")),
    Lab(5, "Userspace drivers, the IOMMU and the disk", "docs/labs/lab5.md", (
        LabTest("disk-fsops", 15, ("run", "--disk", DISK, "disktest", "fsops"), exercise=1,
                status=0, match=(r"^disktest: fsops ok",), timeout=40),
        LabTest("churn", 10, ("run", "--disk", DISK, "disktest", "churn", "100"), exercise=2,
                status=0, match=(r"^disktest: wrote 100 files, 0 bad$",), timeout=40),
        LabTest("verify", 5, ("run", "--disk", DISK, "disktest", "verify", "100"), exercise=2,
                status=0, match=(r"^disktest: verified 100 files, 0 bad$",), timeout=40),
        LabTest("iommu-read-only", 15, ("run", "--disk", DISK, "dmatest"), exercise=3, timeout=6,
                match=(r"^PASS DMA into our own read-only code page ",
                       r"^PASS   \.\.\. and the code page is untouched",
                       r"^PASS DMA into the shared read-only boot archive ")),
        LabTest("dmatest-clean", 5, ("run", "--disk", DISK, "dmatest"), status=0, timeout=6,
                match=(r"^dmatest: \d+ passed, 0 failed",), no_match=(r"^FAIL ",)),
    ), exercises=("submission (libos/lib/disk.c disk_submit)",
                  "completion and the phase bit (libos/lib/disk.c disk_reap)",
                  "the IOMMU's rights check (devices/iommu.py check_page)")),
    Lab(6, "The userspace scheduler and SMP", "docs/labs/lab6.md", (
        LabTest("join", 10, ("run", "sharedcount", "4", "20000"), exercise=1, status=0,
                match=(r"mutex 80000, atomic 80000, want 80000",)),
        LabTest("join-2cpus", 10, ("run", "--cpus", "2", "sharedcount", "4", "20000"), exercise=1,
                status=0, match=(r"mutex 80000, atomic 80000, want 80000",)),
        LabTest("donation", 15, ("run", "--cpus", "2", "parcount", "4", "100000000"), exercise=2,
                status=0, match=(r"threads ran on 2 CPUs$",)),
        LabTest("stress-2cpus", 5, ("run", "--cpus", "2", "stress", "2", "200"), status=0,
                match=(r"^stress: 2 threads, \d+ system calls .* 0 failures",)),
    ), exercises=("thread_join (libos/lib/thread.c)", "CPU donation (libos/lib/process.c process_donate)")),
)}


def get_lab(n: int) -> Lab:
    try:
        return LABS[int(n)]
    except (KeyError, ValueError):
        raise LabError(f"lab {n}: no such lab; the labs are {', '.join(map(str, sorted(LABS)))}") from None


# --------------------------------------------------------------------------
# Markers
# --------------------------------------------------------------------------
MARKER = re.compile(r"^(?P<indent>[ \t]*)(?P<open>/\*|#|//)\s*LAB\s+(?P<lab>\d+)\s+(?P<kind>BEGIN|END)\b"
                    r"(?P<rest>.*)$")
STUB = re.compile(r"STUB:\s*(?P<code>.*?)\s*(?:\*/)?\s*$")
SOURCE_DIRS = ("kernel_asm", "libos", "vmm", "devices")
SOURCE_EXTS = {".c", ".h", ".S", ".s", ".inc", ".py", ".ld"}


@dataclass
class Region:
    path: str
    lab: int
    begin: int                          # 1-based line numbers
    end: int
    stub: str


def find_regions(text: str, path: str = "<text>") -> list[Region]:
    """The marked regions of one file, checked: no nesting, every BEGIN has its END."""
    regions, open_ = [], None
    for i, line in enumerate(text.splitlines(), 1):
        m = MARKER.match(line)
        if not m:
            continue
        lab, kind = int(m.group("lab")), m.group("kind")
        if kind == "BEGIN":
            if open_ is not None:
                raise LabError(f"{path}:{i}: LAB {lab} BEGIN inside the LAB {open_.lab} region "
                               f"opened at line {open_.begin} (regions do not nest)")
            s = STUB.search(m.group("rest"))
            open_ = Region(path, lab, i, 0, s.group("code") if s else "")
        else:
            if open_ is None:
                raise LabError(f"{path}:{i}: LAB {lab} END without a LAB {lab} BEGIN")
            if open_.lab != lab:
                raise LabError(f"{path}:{i}: LAB {lab} END closes the LAB {open_.lab} region "
                               f"opened at line {open_.begin}")
            open_.end = i
            regions.append(open_)
            open_ = None
    if open_ is not None:
        raise LabError(f"{path}:{open_.begin}: LAB {open_.lab} BEGIN without a LAB {open_.lab} END")
    return regions


def strip_lab(text: str, lab: int, path: str = "<text>", only=None) -> tuple[str, int]:
    """text with lab's regions replaced by their stubs; (new text, regions replaced).
    only: the indexes (0, 1, ...) of the file's lab regions to replace (default all)."""
    regions = [r for r in find_regions(text, path) if r.lab == lab]
    if only is not None:
        regions = [r for i, r in enumerate(regions) if i in only]
    if not regions:
        return text, 0
    lines = text.splitlines(keepends=True)
    for r in reversed(regions):
        m = MARKER.match(lines[r.begin - 1].rstrip("\r\n"))
        indent = m.group("indent")
        python = m.group("open") == "#"
        note = f"# LAB {lab}: your code here" if python else f"/* LAB {lab}: your code here */"
        new = [f"{indent}{note}\n"] + ([f"{indent}{r.stub}\n"] if r.stub else [])
        lines[r.begin - 1:r.end] = new
    return "".join(lines), len(regions)


def source_files(root: Path):
    for d in SOURCE_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in SOURCE_EXTS and "__pycache__" not in p.parts:
                yield p


def lab_regions(root: Path = paths.ROOT) -> list[Region]:
    """Every marked region under root's source directories (checked)."""
    out = []
    for p in source_files(root):
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        out += find_regions(text, str(p.relative_to(root)))
    return out


# --------------------------------------------------------------------------
# lab new
# --------------------------------------------------------------------------
COPY = ("kernel_asm", "libos", "vmm", "devices", "tests", "tools", "docs",
        "pyproject.toml", "setup.py", "README.md")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "build")


def new_workspace(n: int, dest: Path, src: Path = paths.ROOT) -> list[Region]:
    """Copy the sources to dest (absent or empty), lab n's regions stubbed out."""
    lab = get_lab(n)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LabError(f"{dest}: exists and is not an empty directory")
    for r in lab_regions(src):              # check every file before writing anything
        pass
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        s = src / name
        if s.is_dir():
            shutil.copytree(s, dest / name, ignore=IGNORE, symlinks=True)
        elif s.is_file():
            shutil.copy2(s, dest / name)
    removed = []
    for p in source_files(dest):
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        rel = str(p.relative_to(dest))
        regions = [r for r in find_regions(text, rel) if r.lab == lab.number]
        if regions:
            p.write_text(strip_lab(text, lab.number, rel)[0])
            gone = 0                        # report the workspace's line numbers
            for r in regions:
                kept = 2 if r.stub else 1
                r.begin -= gone
                gone += r.end - (r.begin + gone) + 1 - kept
                r.end = r.begin + kept - 1
            removed += regions
    (dest / "LAB").write_text(f"{lab.number}\n")
    return removed


# --------------------------------------------------------------------------
# lab grade
# --------------------------------------------------------------------------
@dataclass
class Run:
    status: int | None                  # None: timed out
    output: str
    seconds: float
    error: str = ""                     # the run could not be made (e.g. no gdb)


@dataclass
class Result:
    test: LabTest
    passed: bool
    reason: str
    seconds: float


def _env(ws: Path) -> dict:
    env = dict(os.environ)
    env["XOMB_BUILD_DIR"] = str(ws / "build")
    env["PYTHONPATH"] = str(ws) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_xomb(ws: Path, args, timeout: float) -> Run:
    """The workspace's own `python -m vmm.cli ARGS`, in the workspace."""
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "vmm.cli", *args], cwd=ws, env=_env(ws),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           errors="replace", timeout=timeout)
        return Run(p.returncode, (p.stdout + p.stderr).replace("\r\n", "\n"),
                   time.perf_counter() - t)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return Run(None, out.replace("\r\n", "\n"), time.perf_counter() - t)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gdb(ws: Path, args, commands, timeout: float) -> Run:
    """Start the workspace's `python -m vmm.cli ARGS --gdb 127.0.0.1:PORT --wait-gdb`, run
    `gdb -batch` with commands against it (then `kill`); gdb's output, then the VMM's."""
    t0 = time.perf_counter()
    gdb = shutil.which("gdb")
    if gdb is None:
        return Run(None, "", 0.0, "gdb is not installed (apt-get install gdb)")
    port = _free_port()
    deadline = time.monotonic() + timeout
    vmm = subprocess.Popen([sys.executable, "-m", "vmm.cli", *args, "--gdb", f"127.0.0.1:{port}",
                            "--wait-gdb"], cwd=ws, env=_env(ws), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    vmm_out = b""
    try:
        while b"waiting for gdb" not in vmm_out:    # the stub listens before it says so
            left = deadline - time.monotonic()
            if left <= 0:
                return Run(None, vmm_out.decode(errors="replace"), time.perf_counter() - t0)
            ready, _, _ = select.select([vmm.stdout], [], [], left)
            chunk = os.read(vmm.stdout.fileno(), 65536) if ready else b""
            if ready and not chunk:                 # the VMM ended before gdb could attach
                status = vmm.wait()
                out = vmm_out.decode(errors="replace").replace("\r\n", "\n")
                last = (out.strip().splitlines() or [""])[-1].strip()
                return Run(status, out, time.perf_counter() - t0,
                           f"the VMM exited (status {status}) before gdb could attach: {last!r}")
            vmm_out += chunk
        cmd = [gdb, "-q", "-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off",
               "-ex", f"target remote 127.0.0.1:{port}"]
        for c in commands:
            cmd += ["-ex", c]
        cmd += ["-ex", "kill"]
        sym = ws / "build" / "kernel" / "kernel.sym.elf"
        if sym.is_file():
            cmd.append(str(sym))
        try:
            g = subprocess.run(cmd, cwd=ws, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, errors="replace",
                               timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout or b""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            return Run(None, out, time.perf_counter() - t0)
        try:
            rest, _ = vmm.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            vmm.kill()
            rest, _ = vmm.communicate()
        vmm_out += rest or b""
        out = g.stdout + g.stderr + "\n" + vmm_out.decode(errors="replace")
        return Run(g.returncode, out.replace("\r\n", "\n"), time.perf_counter() - t0)
    finally:
        if vmm.poll() is None:
            vmm.kill()
            vmm.wait()
        if vmm.stdout:
            vmm.stdout.close()


def check(test: LabTest, run: Run) -> tuple[bool, str]:
    """(passed, the first reason it failed)."""
    if run.error:
        return False, run.error
    if run.status is None:
        return False, f"timed out after {test.timeout:g} s"
    for rx in test.match:
        if not re.search(rx, run.output, re.MULTILINE):
            return False, f"no match for /{rx}/"
    for rx in test.no_match:
        m = re.search(rx, run.output, re.MULTILINE)
        if m:
            line = run.output[run.output.rfind("\n", 0, m.start()) + 1:].split("\n", 1)[0]
            return False, f"matched /{rx}/: {line.strip()!r}"
    if test.status is not None and run.status != test.status:
        return False, f"exit status {run.status}, expected {test.status}"
    return True, ""


def grade(n: int, ws: Path = paths.ROOT, log=None) -> tuple[list[Result], str]:
    """Build ws, run lab n's tests; (results, build error or '')."""
    lab = get_lab(n)
    ws = Path(ws).resolve()
    if not (ws / "vmm" / "cli.py").is_file():
        raise LabError(f"{ws}: not a workspace (no vmm/cli.py; make one with 'xomb-vmm lab new')")
    b = run_xomb(ws, ("build",), timeout=600)
    if b.status != 0:
        err = "\n".join(b.output.strip().splitlines()[-15:]) if b.status is not None else "timed out"
        return [Result(t, False, "the workspace does not build", 0.0) for t in lab.tests], err
    runs: dict[tuple, Run] = {}
    results = []
    disk = None
    for t in lab.tests:
        args = t.command
        if DISK in args:                        # one fresh disk image per grading
            if disk is None:
                disk = ws / "build" / "lab" / "disk.img"
                disk.parent.mkdir(parents=True, exist_ok=True)
                disk.unlink(missing_ok=True)
                m = run_xomb(ws, ("mkfs", str(disk), "--size", "16M", "--namespaces", "2"), 60)
                if m.status != 0:
                    return [Result(t, False, "mkfs failed", 0.0) for t in lab.tests], m.output
            args = tuple(str(disk) if a == DISK else a for a in args)
        key = (t.command, t.gdb)
        if key not in runs:                     # one boot per distinct command (and gdb script)
            runs[key] = (run_gdb(ws, args, t.gdb, t.timeout) if t.gdb
                         else run_xomb(ws, args, t.timeout))
        r = runs[key]
        ok, why = check(t, r)
        results.append(Result(t, ok, why, r.seconds))
        if log:
            log(r.output, t)
    return results, ""


def exercise_scores(lab: Lab, results: list[Result]) -> dict[int, tuple[int, int]]:
    """{exercise: (points earned, points)}, exercises in order, 0 (the whole lab) last."""
    out: dict[int, tuple[int, int]] = {}
    for k in sorted({r.test.exercise for r in results}, key=lambda k: (k == 0, k)):
        mine = [r for r in results if r.test.exercise == k]
        out[k] = (sum(r.test.points for r in mine if r.passed), sum(r.test.points for r in mine))
    return out


def print_report(lab: Lab, results: list[Result], build_error: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(highlight=False)
    table = Table(title=f"Lab {lab.number}: {lab.title}")
    table.add_column("exercise")
    table.add_column("test")
    table.add_column("points", justify="right")
    table.add_column("result")
    table.add_column("time", justify="right")
    groups = exercise_scores(lab, results)
    for k, (got, total) in groups.items():
        mine = [r for r in results if r.test.exercise == k]
        for i, r in enumerate(mine):
            table.add_row(str(k) if k and i == 0 else ("-" if not k and i == 0 else ""),
                          r.test.name + (" (gdb)" if r.test.gdb else ""),
                          f"{r.test.points if r.passed else 0}/{r.test.points}",
                          "[green]OK[/]" if r.passed else "[red]FAIL[/]", f"{r.seconds:.1f} s")
        table.add_section()
    con.print(table)
    for k, (got, total) in groups.items():      # plain lines: the per-exercise credit
        print(f"{'Exercise ' + str(k) if k else 'Whole lab '}: {got:>3}/{total:<3} "
              f"{lab.exercise_name(k) if k else '(regression and overall checks)'}")
    if build_error:
        print(f"build failed:\n{build_error}")
    for r in results:                           # plain lines: the reasons, never wrapped
        if not r.passed:
            print(f"FAIL {r.test.name}: {r.reason}")
    score = sum(r.test.points for r in results if r.passed)
    print(f"Score: {score}/{lab.points}  (graded in {seconds:.1f} s)")


# --------------------------------------------------------------------------
# The command line: xomb-vmm lab list | new N DIR | grade N [DIR]
# --------------------------------------------------------------------------
def add_parser(sub) -> None:
    lp = sub.add_parser("lab", help="teaching labs: list, new N DIR, grade N [DIR]")
    ls = lp.add_subparsers(dest="lab_command", metavar="list|new|grade")
    ls.required = True
    ls.add_parser("list", help="the labs and their graded tests").set_defaults(func=cmd_list)
    nw = ls.add_parser("new", help="a student workspace with lab N's regions removed")
    nw.add_argument("n", type=int, metavar="N")
    nw.add_argument("dir", metavar="DIR")
    nw.set_defaults(func=cmd_new)
    gr = ls.add_parser("grade", help="build and boot a workspace, run lab N's tests, score it")
    gr.add_argument("n", type=int, metavar="N")
    gr.add_argument("dir", metavar="DIR", nargs="?", default=None,
                    help="the workspace (default: this repository, the solutions)")
    gr.add_argument("-v", "--verbose", action="store_true", help="print each command's console")
    gr.set_defaults(func=cmd_grade)


def cmd_list(args, t_start) -> int:
    regions = lab_regions(paths.ROOT)
    for lab in LABS.values():
        mine = [r for r in regions if r.lab == lab.number]
        print(f"Lab {lab.number}: {lab.title}  ({lab.points} points, {lab.handout})")
        for k, name in enumerate(lab.exercises, 1):
            print(f"  exercise {k}: {name}")
        for r in mine:
            print(f"  region    {r.path}:{r.begin}-{r.end}")
        for t in lab.tests:
            ex = f"ex {t.exercise}" if t.exercise else "lab "
            gdb = "  (+ gdb check)" if t.gdb else ""
            print(f"  test      {t.name:<20} {t.points:>3}  {ex}  xomb-vmm {' '.join(t.command)}{gdb}")
    return 0


def cmd_new(args, t_start) -> int:
    removed = new_workspace(args.n, Path(args.dir))
    lab = LABS[args.n]
    print(f"Lab {lab.number} workspace in {args.dir}: {len(removed)} region(s) to write")
    for r in removed:
        print(f"  {r.path}:{r.begin}")
    print(f"Read {lab.handout}; grade with: xomb-vmm lab grade {lab.number} {args.dir}")
    return 0


def cmd_grade(args, t_start) -> int:
    ws = Path(args.dir) if args.dir else paths.ROOT
    lab = get_lab(args.n)
    log = None
    if args.verbose:
        def log(output, t):
            print(f"--- {t.name}: xomb-vmm {' '.join(t.command)}\n{output}", end="")
    t = time.perf_counter()
    results, err = grade(args.n, ws, log)
    print_report(lab, results, err, time.perf_counter() - t)
    return 0 if all(r.passed for r in results) and not err else 1
