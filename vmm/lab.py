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
import shutil
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


@dataclass(frozen=True)
class Lab:
    number: int
    title: str
    handout: str
    tests: tuple[LabTest, ...] = field(default_factory=tuple)

    @property
    def points(self) -> int:
        return sum(t.points for t in self.tests)


SYSCONF = ("run", "sysconf")

LABS: dict[int, Lab] = {lab.number: lab for lab in (
    Lab(3, "System calls and upcalls", "docs/labs/lab3.md", (
        LabTest("syscall-reflect", 10, SYSCONF,
                match=(r"^PASS syscall\.reflected$", r"^PASS syscall\.reflected\.registers$",
                       r"^PASS syscall\.reflected\.returns$")),
        LabTest("fault-upcall", 15, SYSCONF,
                match=(r"^PASS fault\.upcall$", r"^PASS fault\.cr2$", r"^PASS fault\.resume$",
                       r"^PASS fault\.resume_read$")),
        LabTest("sysconf-clean", 10, SYSCONF,
                match=(r"^sysconf: \d+ passed, 0 failed$",), no_match=(r"^FAIL ",), status=0),
        LabTest("faults-contained", 5, ("run", "faults"),
                match=(r"^faults: \d+ attacks, 0 not stopped$",), no_match=(r"NOT STOPPED",),
                status=0),
    )),
    Lab(4, "The libOS: allocator and spawn", "docs/labs/lab4.md", (
        LabTest("malloc", 10, SYSCONF, match=(r"^PASS libos\.malloc$",)),
        LabTest("malloc-reuse", 15, SYSCONF,
                match=(r"^PASS libos\.malloc\.reuse$", r"^PASS libos\.malloc\.reuse_freed$")),
        LabTest("malloc-coalesce", 10, SYSCONF, match=(r"^PASS libos\.malloc\.coalesce$",)),
        LabTest("spawn-hello", 10, ("run", "hello", "alpha", "beta"),
                match=(r"^Hello from hello!$", r'argv\[2\] = "beta"'), status=0),
        LabTest("exit-status", 5, ("run", "hello", "--status", "7"), status=7),
    )),
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


def strip_lab(text: str, lab: int, path: str = "<text>") -> tuple[str, int]:
    """text with lab's regions replaced by their stubs; (new text, regions replaced)."""
    regions = [r for r in find_regions(text, path) if r.lab == lab]
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


def check(test: LabTest, run: Run) -> tuple[bool, str]:
    """(passed, the first reason it failed)."""
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
    for t in lab.tests:
        if t.command not in runs:               # one boot per distinct command
            runs[t.command] = run_xomb(ws, t.command, t.timeout)
        r = runs[t.command]
        ok, why = check(t, r)
        results.append(Result(t, ok, why, r.seconds))
        if log:
            log(r.output, t)
    return results, ""


def print_report(lab: Lab, results: list[Result], build_error: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(highlight=False)
    table = Table(title=f"Lab {lab.number}: {lab.title}")
    table.add_column("test")
    table.add_column("points", justify="right")
    table.add_column("result")
    table.add_column("time", justify="right")
    for r in results:
        table.add_row(r.test.name, f"{r.test.points if r.passed else 0}/{r.test.points}",
                      "[green]OK[/]" if r.passed else "[red]FAIL[/]", f"{r.seconds:.1f} s")
    con.print(table)
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
        for r in mine:
            print(f"  exercise  {r.path}:{r.begin}-{r.end}")
        for t in lab.tests:
            print(f"  test      {t.name:<18} {t.points:>3}  xomb-vmm {' '.join(t.command)}")
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
