"""`xomb-vmm bench`: the exokernel against Linux on the same host, side by side.

How it works (docs/PERFORMANCE.md):

* The guest half is the `bench` program (libos/programs/bench.c).  init starts
  it in run mode ``abi.RUN_BENCH`` and shares its platform page with it; bench
  times each benchmark with ``rdtsc`` and prints ``@r ID ROUND CYCLES ITERS``.
  Cycles become nanoseconds with the TSC frequency (KVM_GET_TSC_KHZ, the same
  value the guest gets in bootinfo.tsc_khz).
* The Linux half is ``vmm/bench_linux.c``, built here with gcc, run once per
  round: when the guest writes ``PLAT_MARK`` = ROUND r, the VMM (still in that
  MMIO exit, the vCPU stopped) runs the Linux round, so rounds interleave.
* ``PHASE_BEGIN/END`` around each timed loop: the VMM snapshots its exit
  counters, giving VM exits per second by reason for each benchmark.
* ``COUNT_BEGIN/END`` around one operation: the VMM single-steps it
  (Machine.set_debug) and classifies every instruction by its address:
  kernel (>= KBASE), gate (the PVM syscall gate page at GATE_VA), user.
* Rows without a Linux pair: VM creation to the first guest instruction
  (single-step the first instruction of a fresh VM), VMM start to the shell
  prompt (the guest's boot timer), console throughput and exits per line.

Adding a row: a ``Row`` in ``ROWS`` (and, for a guest benchmark, an entry in
bench.c's table; for a Linux pair, one in bench_linux.c's).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmm import abi, paths

EXC_EMUL = 258          # vmm.machine.EXC_EMUL: an emulation failure at pc (our int3)

LINUX_SRC = Path(__file__).with_name("bench_linux.c")


@dataclass
class Row:
    key: str                    # guest benchmark name (bench.c) or a special row
    title: str
    linux: str | None = None    # bench_linux.c benchmark name
    linux_title: str = ""
    target_insns: int | None = None   # kernel instructions per operation (issue 7)
    kind: str = "guest"         # guest | guest2 | vm_create | boot | upgrade


ROWS = [
    Row("null", "null syscall (MAP n=0)", "getpid", "getpid()", 60),
    Row("share", "share 4 KiB page into another AS + unmap", "mmap", "mmap+touch+munmap", 200),
    Row("fault", "page-fault upcall: fault, libOS maps, resume", "segv",
        "SIGSEGV handler + mprotect", 120),
    Row("yield", "address-space switch round trip (yield ping-pong)", "pipe",
        "pipe ping-pong, same CPU", 120),
    Row("xcpu", "IPC round trip across CPUs (2 address spaces, shared page, 2 vCPUs)",
        "futex_x", "futex ping-pong, 2 processes on 2 CPUs", kind="guest2"),
    Row("console", "console output, 64-byte lines"),
    Row("vm_create", "VM creation to first guest instruction", kind="vm_create"),
    Row("boot", "VMM start to shell prompt", kind="boot"),
    Row("upgrade", "rebootless kernel upgrade (2 vCPUs, a program running): pause, "
        "all vCPUs stopped -> resumed", kind="upgrade"),
]


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# The Linux side
# --------------------------------------------------------------------------
def build_linux_bench(out_dir: Path | None = None) -> Path:
    """gcc -O2 bench_linux.c, cached by the source's hash."""
    out_dir = Path(out_dir or paths.BUILD / "bench")
    src = LINUX_SRC.read_bytes()
    tag = hashlib.sha256(src).hexdigest()[:16]
    exe = out_dir / f"linux_bench-{tag}"
    if exe.exists():
        return exe
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".linux_bench-{os.getpid()}"
    cc = os.environ.get("XOMB_HOST_CC", "gcc")
    try:
        r = subprocess.run([cc, "-O2", "-o", str(tmp), str(LINUX_SRC)],
                           capture_output=True, text=True)
    except FileNotFoundError:
        raise BenchError(f"host compiler {cc!r} not found: the Linux column needs gcc") from None
    if r.returncode:
        raise BenchError(f"building {LINUX_SRC.name} failed:\n{r.stderr}")
    tmp.replace(exe)
    return exe


def run_linux_round(exe: Path, names: list[str], quick: bool) -> dict[str, float]:
    """One round of the Linux benchmarks in a fresh process: name -> ns per op."""
    r = subprocess.run([str(exe), *(["-q"] if quick else []), *names],
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise BenchError(f"linux_bench failed ({r.returncode}): {r.stderr.strip()}")
    out = {}
    for line in r.stdout.splitlines():
        p = line.split()
        if len(p) == 4 and p[0] == "@h":
            out[p[1]] = float(p[2])
    return out


# --------------------------------------------------------------------------
# The instruction counter
# --------------------------------------------------------------------------
class InsnCounter:
    """Count the kernel instructions of a window of guest execution, exactly.

    On this PVM host ring 3 runs natively: a single-step trap in user mode is
    delivered to the guest's own #DB vector, not to us, so we cannot simply
    single-step the window; and an int3 breakpoint in (emulated) ring 0 is an
    emulation failure.  So, while the window is open:

    * the first byte of every kernel entry (`vec3`: the gate's and user int3's
      vector; `exc_common`: where every exception stub jumps) becomes an int3;
      the emulator cannot emulate it and exits (KVM internal error, emulation
      failure, nothing executed), which the machine hands to its debug
      handlers as EXC_EMUL (an `out dx, al` would do, but the in-kernel PIC
      absorbs it when dx happens to be 0x20; a `hlt` just halts in the host);
    * there we put the original byte back and single-step (ring 0 is
      emulated here: one KVM_EXIT_DEBUG per instruction) until the next
      instruction is sysretq/iretq: counted, then stepping stops before the
      CPU runs a user instruction, and the entries are armed again.

    Each step exit is one executed instruction; the exit's pc is the next
    one, so the executed instruction is the previous pc (kept in `trace`).
    Counts: `kernel` instructions (>= KBASE), `entries` into the kernel, and
    `gate` (the int3 of the PVM syscall gate, one per syscall on this host).
    """
    OWNER = "icount"

    def __init__(self, machine, symbols: dict[str, int] | None = None):
        import re
        self.m = machine
        self.active = False
        self.stepping = False
        self.counts: dict[str, int] = {}
        self.trace: list[int] = []
        self.entries: dict[int, int] = {}           # kernel va -> phys
        self._prev = None
        syms = symbols if symbols is not None else (getattr(machine.boot, "symbols", None) or {})
        # Exceptions: one breakpoint at exc_common, where every stub jumps;
        # each stub's own instructions (push [0], push vector, jmp
        # exc_common) are counted from its bytes.
        self.stub_len: dict[int, int] = {}
        for name in ("vec3", "exc_common"):
            if syms.get(name, 0) >= abi.KBASE:
                self.entries[syms[name]] = syms[name] - abi.KBASE
        for name, va in syms.items():
            if re.fullmatch(r"vec\d+", name) and name != "vec3" and va >= abi.KBASE:
                self.stub_len[int(name[3:])] = self._stub_insns(machine.mem, va)
        self._orig = {pa: bytes(machine.mem.read(pa, 1)) for pa in self.entries.values()}
        self.vec3 = syms.get("vec3")
        machine.debug_handlers.append(self._on_debug)

    @staticmethod
    def _stub_insns(mem, va: int) -> int:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
        code = bytes(mem.read(va - abi.KBASE, 32))
        n = 0
        for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, va):
            n += 1
            if insn.mnemonic == "jmp":
                return n
        return 0

    @staticmethod
    def where(rip: int) -> str:
        if rip >= abi.KBASE:
            return "kernel"
        if abi.GATE_VA <= rip < abi.GATE_VA + abi.PAGE:
            return "gate"
        return "user"

    def _arm(self):
        for pa in self.entries.values():
            self.m.mem.write(pa, b"\xcc")

    def _disarm(self):
        for pa, b in self._orig.items():
            self.m.mem.write(pa, b)

    def begin(self):
        if not self.entries:
            raise BenchError("no kernel entry symbols (vecN): cannot count instructions")
        self.counts = {"kernel": 0, "gate": 0, "entries": 0, "user": 0}
        self.trace = []
        self.active = True
        self.stepping = False
        self._arm()

    def end(self) -> dict[str, int]:
        self.active = False
        self._disarm()
        if self.stepping:
            self.stepping = False
            self.m.set_debug(self.OWNER)
        c = dict(self.counts)
        c.pop("user", None)
        return c

    def _enter(self, pc: int):
        """An armed kernel entry was reached (nothing of it executed yet)."""
        self._disarm()
        regs = self.m.vcpu.get_regs()
        self.counts["entries"] += 1
        if pc != self.vec3:                         # exc_common: [rsp] = vector
            vector = self.m.mem.read_u64(regs.rsp - abi.KBASE)
            self.counts["kernel"] += self.stub_len.get(vector, 0)
        else:                                       # the PVM gate's int3, or a user int3
            frame_rip = self.m.mem.read_u64(regs.rsp - abi.KBASE)
            if frame_rip == abi.GATE_VA + 1:
                self.counts["gate"] += 1
        self._prev = pc
        self.stepping = True
        self.m.set_debug(self.OWNER, singlestep=True)

    def _on_debug(self, m, exception, pc, dr6) -> bool:
        if not self.active:
            return False
        if not self.stepping:
            if exception in (EXC_EMUL, 3) and pc in self.entries:
                self._enter(pc)
                return True
            return False
        prev = self._prev
        self.counts[self.where(prev)] += 1
        self.trace.append(prev)
        self._prev = pc
        if pc >= abi.KBASE:
            op = bytes(m.mem.read(pc - abi.KBASE, 3))
            if op[:2] == b"\x48\xcf" or op == b"\x48\x0f\x07":
                # iretq / sysretq: the last kernel instruction.  (A step trap
                # after it would land in ring 3, natively, as a guest #DB.)
                self.counts["kernel"] += 1
                self.trace.append(pc)
                pc = 0
        if pc < abi.KBASE:                  # (back) in ring 3: stop before it runs
            self.stepping = False
            m.set_debug(self.OWNER)
            self._arm()
        return True


# --------------------------------------------------------------------------
# The guest side
# --------------------------------------------------------------------------
class _Sink:
    """Console output of a bench run: keeps the '@' lines, counts the rest."""

    def __init__(self):
        self.buf = bytearray()
        self.lines: list[str] = []
        self.other = 0

    def write(self, b: bytes):
        self.buf += b
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                break
            line = bytes(self.buf[:i]).decode(errors="replace")
            del self.buf[:i + 1]
            if line.startswith("@"):
                self.lines.append(line)
            else:
                self.other += 1
                if not line.startswith("console throughput"):
                    self.lines.append(line)

    def flush(self):
        pass


@dataclass
class GuestRun:
    rounds: dict[str, list[float]] = field(default_factory=dict)   # key -> ns per op
    linux: dict[str, list[float]] = field(default_factory=dict)    # linux name -> ns per op
    insns: dict[str, dict[str, int]] = field(default_factory=dict)
    exits: dict[str, dict[str, int]] = field(default_factory=dict)  # per phase, summed
    phase_s: dict[str, float] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    bytes_per_s: list[float] = field(default_factory=list)
    status: int = 0
    log: list[str] = field(default_factory=list)


def _built(kernel_file: str | None = None):
    from vmm.build import build_all
    built = build_all()
    if kernel_file:
        from vmm.cli import load_kernel_file
        built.kernel = load_kernel_file(kernel_file)
    return built


def _boot_state(built, run_mode: int, cmdline: str, ram: int, kvm_path: str, ncpus: int = 1):
    from vmm import hostinfo
    from vmm.bootcache import build_boot_state_cached as build_boot_state
    return build_boot_state(built.kernel, built.programs, ram_bytes=ram,
                            host=hostinfo.host_type(), cmdline=cmdline, run_mode=run_mode,
                            tsc_khz=hostinfo.tsc_khz(kvm_path), ncpus=ncpus)


def run_guest(built, keys: list[str], rounds: int, quick: bool, linux_exe: Path | None,
              ram: int = 128 << 20, kvm_path: str = "/dev/kvm", timeout: float = 300.0,
              ncpus: int = 1) -> GuestRun:
    from devices.console import ConsoleIO
    from vmm.machine import Machine
    cmdline = " ".join(["-r", str(rounds), *(["-q"] if quick else []), *keys])
    boot = _boot_state(built, abi.RUN_BENCH, cmdline, ram, kvm_path, ncpus)
    tsc_khz = boot.bootinfo.tsc_khz
    if not tsc_khz:
        raise BenchError("the TSC frequency is unknown (KVM_GET_TSC_KHZ failed)")
    sink = _Sink()
    res = GuestRun()
    by_id = {i + 1: k for i, k in enumerate(keys)}     # bench's ids: argv positions
    # argv = bench -r R [-q] KEYS...: the first key is at argv[3] (or [4] with -q)
    first = 4 if quick else 3
    by_id = {first + i: k for i, k in enumerate(keys)}
    linux_names = [r.linux for r in ROWS if r.key in keys and r.linux]
    m = Machine(boot, console=ConsoleIO(sink, None), kvm_path=kvm_path, cpus=ncpus)
    counter = InsnCounter(m, boot.symbols)
    phase = {}

    def on_mark(op: int, ident: int):
        key = by_id.get(ident, str(ident))
        if op == abi.MARK_ROUND:
            if linux_exe is not None and linux_names:
                for n, v in run_linux_round(linux_exe, linux_names, quick).items():
                    res.linux.setdefault(n, []).append(v)
        elif op == abi.MARK_PHASE_BEGIN:
            phase[key] = (time.perf_counter(), dict(m.exit_counts))
        elif op == abi.MARK_PHASE_END and key in phase:
            t0, before = phase.pop(key)
            res.phase_s[key] = res.phase_s.get(key, 0.0) + time.perf_counter() - t0
            acc = res.exits.setdefault(key, {})
            for reason, n in m.exit_counts.items():
                d = n - before.get(reason, 0) - (1 if reason == "MMIO" else 0)  # our END mark
                if d:
                    acc[reason] = acc.get(reason, 0) + d
        elif op == abi.MARK_COUNT_BEGIN:
            counter.begin()
        elif op == abi.MARK_COUNT_END:
            c = counter.end()               # bench counts 3 times: keep the cleanest
            if key not in res.insns or c["kernel"] < res.insns[key]["kernel"]:
                res.insns[key] = c

    m.mark_handler = on_mark
    try:
        res.status = m.run(timeout=timeout)
    finally:
        m.close()
    for line in sink.lines:
        p = line.split()
        if p[0] == "@r" and len(p) == 5:
            key = by_id.get(int(p[1]), p[1])
            cycles, iters = int(p[3]), int(p[4])
            ns = cycles * 1e6 / tsc_khz / iters
            res.rounds.setdefault(key, []).append(ns)
            res.ops[key] = res.ops.get(key, 0) + iters
            if key == "console":
                res.bytes_per_s.append(64 * iters / (cycles / (tsc_khz * 1e3)))
        elif p[0] != "@done":
            res.log.append(line)
    if res.status != 0:
        raise BenchError(f"the guest benchmark stopped with status {res.status} "
                         f"({m.stop_reason}): " + " | ".join(res.log[-5:]))
    return res


def measure_vm_create(boot, kvm_path: str = "/dev/kvm") -> dict[str, float]:
    """A fresh Machine from a built boot state to its first guest instruction
    (KVM_EXIT_DEBUG after single-stepping it), in ms, with the split."""
    from devices.console import ConsoleIO
    from vmm.machine import Machine
    t0 = time.perf_counter()
    m = Machine(boot, console=ConsoleIO(_Sink(), None), kvm_path=kvm_path)
    t1 = time.perf_counter()
    hit = {}

    def first(mach, exception, pc, dr6):
        hit.setdefault("t", time.perf_counter())
        mach.request_stop(0, "first instruction")
        return True
    m.debug_handlers.append(first)
    m.set_debug("vm_create", singlestep=True)
    try:
        m.run(timeout=10)
    finally:
        m.close()
    if "t" not in hit:
        raise BenchError("no first-instruction debug exit")
    return {"total_ms": (hit["t"] - t0) * 1e3, "create_ms": (t1 - t0) * 1e3,
            "to_first_insn_ms": (hit["t"] - t1) * 1e3}


def measure_boot(built, ram: int, kvm_path: str = "/dev/kvm") -> dict[str, float]:
    """VMM start (boot state built from the cached build) to the guest's boot
    timer at the shell prompt; then the shell gets `exit`."""
    from devices.console import BytesSource, ConsoleIO
    from vmm.machine import Machine
    t0 = time.perf_counter()
    boot = _boot_state(built, abi.RUN_SHELL, "", ram, kvm_path)
    t1 = time.perf_counter()
    m = Machine(boot, console=ConsoleIO(_Sink(), BytesSource(b"exit\n")),
                kvm_path=kvm_path, t_start=t0)
    try:
        status = m.run(timeout=30)
    finally:
        m.close()
    st = m.stats
    if status != 0 or "boot_to_prompt_ms" not in st:
        raise BenchError(f"boot run ended with status {status} ({m.stop_reason})")
    return {"total_ms": st["boot_to_prompt_ms"], "boot_state_ms": (t1 - t0) * 1e3,
            "create_ms": st.get("create_ms", 0.0),
            "guest_ms": st.get("first_run_to_prompt_ms") or 0.0,
            "exits": sum(v for k, v in st.get("exits", {}).items())}


def measure_boot_insns(built, ram: int, kvm_path: str = "/dev/kvm") -> dict[str, int]:
    """Kernel instructions (and entries: syscalls and faults) from the first
    kernel entry to the boot timer at the shell prompt, counted exactly."""
    from devices.console import ConsoleIO
    from vmm.machine import Machine
    boot = _boot_state(built, abi.RUN_SHELL, "", ram, kvm_path)
    m = Machine(boot, console=ConsoleIO(_Sink(), None), kvm_path=kvm_path)
    counter = InsnCounter(m, boot.symbols)
    res: dict[str, int] = {}
    write = m.platform.mmio_write

    def on_write(page, off, data):
        if off == abi.PLAT_BOOT_TIMER and counter.active:
            res.update(counter.end())
            m.request_stop(0, "prompt")
        return write(page, off, data)
    m.platform.mmio_write = on_write
    counter.begin()
    try:
        m.run(timeout=60)
    finally:
        m.close()
    return res


# --------------------------------------------------------------------------
# Statistics and the report
# --------------------------------------------------------------------------
def _stats(vals: list[float]) -> dict | None:
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def run_bench(quick: bool = False, rounds: int | None = None, kvm_path: str = "/dev/kvm",
              ram: int = 128 << 20, progress=None, kernel_file: str | None = None) -> dict:
    """Every row; returns the JSON-able result."""
    say = progress or (lambda s: None)
    rounds = rounds or (3 if quick else 9)
    built = _built(kernel_file)
    try:
        linux = build_linux_bench()
    except BenchError as exc:
        say(f"no Linux column: {exc}")
        linux = None
    keys = [r.key for r in ROWS if r.kind == "guest"]
    say(f"guest benchmarks, {rounds} rounds interleaved with Linux ...")
    g = run_guest(built, keys, rounds, quick, linux, ram=ram, kvm_path=kvm_path)
    keys2 = [r.key for r in ROWS if r.kind == "guest2"]
    if keys2:                       # rows that need two vCPUs: a VM of their own
        say("cross-CPU benchmarks (2 vCPUs) ...")
        g2 = run_guest(built, keys2, rounds, quick, linux, ram=ram, kvm_path=kvm_path, ncpus=2)
        for attr in ("rounds", "linux", "ops", "phase_s", "exits"):
            getattr(g, attr).update(getattr(g2, attr))
    special_rounds = 3 if quick else 5
    say("VM creation and boot ...")
    boot_state = _boot_state(built, abi.RUN_SHELL, "", ram, kvm_path)
    creates = [measure_vm_create(boot_state, kvm_path) for _ in range(special_rounds)]
    boots = [measure_boot(built, ram, kvm_path) for _ in range(special_rounds)]
    boot_insns = measure_boot_insns(built, ram, kvm_path)
    say("rebootless kernel upgrades ...")
    from vmm import upgrade
    upgrades = upgrade.measure(built, rounds=6 if quick else 20, ram=ram, kvm_path=kvm_path)
    from vmm import hostinfo
    result = {"host": {"kvm": "PVM" if hostinfo.host_type() == abi.HOST_PVM else "VMX/SVM",
                       "tsc_khz": hostinfo.tsc_khz(kvm_path), "uname": " ".join(os.uname())},
              "quick": quick, "rounds": rounds, "rows": []}
    for r in ROWS:
        row = {"key": r.key, "title": r.title, "linux_title": r.linux_title,
               "target_kernel_insns": r.target_insns}
        if r.kind in ("guest", "guest2"):
            row["unit"] = "ns/op"
            row["guest"] = _stats(g.rounds.get(r.key, []))
            row["linux"] = _stats(g.linux.get(r.linux, [])) if r.linux else None
            row["insns"] = g.insns.get(r.key)
            ex = g.exits.get(r.key, {})
            secs = g.phase_s.get(r.key, 0.0)
            row["exits"] = ex
            row["exits_per_s"] = {k: v / secs for k, v in ex.items()} if secs else {}
            row["exits_per_op"] = sum(ex.values()) / g.ops[r.key] if g.ops.get(r.key) else None
            if r.key == "console":
                row["bytes_per_s"] = _stats(g.bytes_per_s)
                row["exits_per_line"] = row["exits_per_op"]
        elif r.kind == "vm_create":
            row["unit"] = "ms"
            row["guest"] = _stats([c["total_ms"] for c in creates])
            row["split"] = {k: _stats([c[k] for c in creates]) for k in creates[0]}
        elif r.kind == "boot":
            row["unit"] = "ms"
            row["guest"] = _stats([b["total_ms"] for b in boots])
            row["split"] = {k: _stats([b[k] for b in boots]) for k in boots[0]}
            row["insns"] = boot_insns or None
        elif r.kind == "upgrade":
            row["unit"] = "ms"
            row["guest"] = _stats(upgrades["pause_ms"])
            row["split"] = {"command_ms": _stats(upgrades["command_ms"]),
                            "reboot_instead_ms": _stats([b["total_ms"] for b in boots])}
        if row.get("guest") and row.get("linux"):
            row["ratio"] = row["guest"]["median"] / row["linux"]["median"]
        result["rows"].append(row)
    return result


def _fmt_t(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.2f} ms"
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e3:
        return f"{v / 1e3:.2f} µs"
    return f"{v:.0f} ns"


def _mmm(s: dict | None, unit: str) -> str:
    if not s:
        return "-"
    return f"{_fmt_t(s['median'], unit)}\n({_fmt_t(s['min'], unit)} .. {_fmt_t(s['max'], unit)})"


def print_report(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    con = console or Console()
    if console is None and not con.is_terminal:
        con.width = max(con.width, 140)          # a pipe or a file: the whole table
    t = Table(title=f"xomb-vmm bench ({result['host']['kvm']}, TSC "
                    f"{result['host']['tsc_khz'] / 1000:.1f} MHz, {result['rounds']} rounds; "
                    f"median, (min .. max))", show_lines=True)
    for col, j in (("benchmark", "left"), ("xomb guest", "right"), ("Linux host", "right"),
                   ("ratio", "right"), ("kernel insns\n(target) +gate", "right"),
                   ("VM exits", "left")):
        t.add_column(col, justify=j)
    for row in result["rows"]:
        unit = row.get("unit", "ns/op")
        name = row["title"] + (f"\nvs {row['linux_title']}" if row.get("linux_title") else "")
        ins = row.get("insns")
        if ins:
            tgt = row.get("target_kernel_insns")
            ok = "" if tgt is None else (" ✓" if ins["kernel"] <= tgt else " ✗")
            ins_s = (f"{ins['kernel']} ({tgt}){ok}" if tgt else f"{ins['kernel']}") + \
                f"\n+{ins['gate']} gate, {ins['entries']} entries"
        else:
            ins_s = "-"
        ex = row.get("exits_per_s")
        if ex is not None:
            ex_s = ", ".join(f"{k} {v:.0f}/s" for k, v in sorted(ex.items())) or "none"
            if row.get("exits_per_op") is not None:
                ex_s += f"\n{row['exits_per_op']:.3f} per op"
        elif row.get("split"):
            ex_s = ", ".join(f"{k.replace('_ms', '')} {v['median']:.2f}"
                             for k, v in row["split"].items() if k != "total_ms" and v)
        else:
            ex_s = ""
        guest = _mmm(row.get("guest"), unit)
        if row.get("bytes_per_s"):
            guest += f"\n{row['bytes_per_s']['median'] / 1e6:.1f} MB/s"
        ratio = (f"{row['ratio']:.1f}x" if row['ratio'] >= 0.1 else f"{row['ratio']:.4f}x") \
            if row.get("ratio") else ""
        t.add_row(name, guest, _mmm(row.get("linux"), unit), ratio, ins_s, ex_s)
    con.print(t)
    # bar chart: guest and Linux medians on a log scale
    con.print("[bold]median time per operation (log scale; █ xomb guest, ░ Linux host)[/bold]")
    import math
    vals = [v for row in result["rows"] if row.get("unit") == "ns/op"
            for v in (row["guest"] and row["guest"]["median"],
                      row.get("linux") and row["linux"]["median"]) if v]
    if vals:
        lo, hi = math.log10(min(vals)) - 0.3, math.log10(max(vals))
        width = 50

        def bar(v, ch):
            return ch * max(1, int(width * (math.log10(v) - lo) / (hi - lo or 1)))
        for row in result["rows"]:
            if row.get("unit") != "ns/op" or not row.get("guest"):
                continue
            gm = row["guest"]["median"]
            con.print(f"{row['key']:>8} {bar(gm, '█')} {_fmt_t(gm, 'ns')}", highlight=False)
            if row.get("linux"):
                lm = row["linux"]["median"]
                con.print(f"{'':>8} [dim]{bar(lm, '░')} {_fmt_t(lm, 'ns')}[/dim]",
                          highlight=False)


def write_plot(result: dict, path: str) -> bool:
    """A PNG bar chart (matplotlib, the optional [plot] extra). False if missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r.get("unit") == "ns/op" and r.get("guest")]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.7 * len(rows)))
    ys = range(len(rows))
    g = [r["guest"]["median"] for r in rows]
    lx = [(r["linux"] or {}).get("median", 0) if r.get("linux") else 0 for r in rows]
    ax.barh([y + 0.2 for y in ys], g, height=0.4, label="xomb guest")
    ax.barh([y - 0.2 for y in ys], lx, height=0.4, label="Linux host")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([r["key"] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("ns per operation (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def side_by_side(rows: list[dict], host: str = "host") -> str:
    """The device and network tables (vmm/diskbench.py, netbench.py, netbench_host.py):
    a row is {title, unit, guest, host or None, ratio or None}; per-operation counts
    (units like exits/IO, irqs/frame) get three decimals; a row with guest_min/guest_max
    (and host_min/host_max) gets a "min .. max" line under it."""
    lines = [f"{'':<56} {'guest':>10} {host:>12} {'guest/host':>10}"]
    for r in rows:
        h = f"{r['host']:>12.1f}" if r["host"] is not None else f"{'-':>12}"
        q = f"{r['ratio']:>9.2f}x" if r["ratio"] is not None else f"{'':>10}"
        per_op = re.search(r"/(IO|frame)$", r["unit"]) is not None
        g = f"{r['guest']:>10.3f}" if per_op else f"{r['guest']:>10.1f}"
        lines.append(f"{r['title']:<44} {r['unit'][:11]:>11} {g} {h} {q}")
        if "guest_min" in r:
            hr = f" {r['host_min']:>5.0f}..{r['host_max']:<6.0f}" if "host_min" in r else ""
            lines.append(f"{'  min .. max':<56} {r['guest_min']:>4.0f}..{r['guest_max']:<5.0f}"
                         + hr)
    return "\n".join(lines)


def main(args) -> int:
    from rich.console import Console
    err = Console(stderr=True)
    result = run_bench(quick=args.quick, rounds=args.rounds, kvm_path=args.kvm_device,
                       kernel_file=args.kernel,
                       progress=lambda s: err.print(f"[dim]xomb-vmm bench: {s}[/dim]"))
    print_report(result)
    try:                                # the disk rows (vmm/diskbench.py, docs/DEVICES.md)
        from vmm.diskbench import disk_bench_rows, format_rows
        err.print("[dim]xomb-vmm bench: disk: a VF of a fresh image vs host pread/pwrite ...[/dim]")
        result["disk"] = disk_bench_rows(quick=args.quick, kvm_path=args.kvm_device)
        print(format_rows(result["disk"]))
    except Exception as exc:            # never lose the other rows over the disk
        err.print(f"xomb-vmm bench: disk rows skipped: {exc}")
    try:                                # the NIC rows (vmm/netbench.py, docs/DEVICES.md)
        from vmm import netbench
        err.print("[dim]xomb-vmm bench: nic: VF -> VF through the switch vs an AF_UNIX "
                  "socket pair ...[/dim]")
        result["nic"] = netbench.nic_bench_rows(quick=args.quick, kvm_path=args.kvm_device)
        print(netbench.format_rows(result["nic"]))
    except Exception as exc:            # never lose the other rows over the NIC
        err.print(f"xomb-vmm bench: nic rows skipped: {exc}")
    try:                                # host <-> guest over a TAP vs a veth pair (issue 5)
        from vmm import netbench_host
        why = netbench_host.skip_reason(args.kvm_device)
        if why:
            err.print(f"xomb-vmm bench: host <-> guest network rows skipped: {why}")
        else:
            err.print("[dim]xomb-vmm bench: net: host <-> guest over a TAP vs two namespaces "
                      "joined by a veth pair ...[/dim]")
            result["net_host"] = netbench_host.host_bench_rows(quick=args.quick,
                                                               kvm_path=args.kvm_device)
            print(netbench_host.format_rows(result["net_host"]))
    except Exception as exc:            # never lose the other rows over the network
        err.print(f"xomb-vmm bench: host <-> guest network rows skipped: {exc}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        if not write_plot(result, args.plot):
            err.print("xomb-vmm bench: --plot needs matplotlib (pip install 'xomb-vmm[plot]'); "
                      "skipped")
    return 0
