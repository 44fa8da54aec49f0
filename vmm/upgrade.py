"""Rebootless kernel upgrade: swap the kernel under running applications (docs/UPGRADE.md).

XOmB's kernel keeps no state of its own but page tables, the frame table, a few global
words and per-CPU blocks, all in its data area at fixed offsets.  Its code is stateless
between system calls.  So a new kernel can take over a running machine:

 1. load it (assemble a source directory against this VMM's ABI, or read a built
    kernel.bin + kernel.json) and check it keeps every convention the running one
    set up (the data layout, per-CPU offsets, page-table and ABI constants: the
    ``layout`` each kernel records when it is built).  Additions are fine; a changed
    or missing convention refuses the upgrade and changes nothing;
 2. pause every vCPU at a *safe point*: in user mode (its kernel stack is empty) or
    halted in ``yield_halted`` (nothing on its stack but data).  A vCPU caught inside
    the kernel is let run a little longer and asked again;
 3. swap: the code region, the IDT (the only tables holding code addresses), LSTAR
    where it names ``syscall_entry``, and each halted vCPU's rip (old yield_halted ->
    new yield_halted);
 4. run the NEW kernel's ``kernel_selftest`` once, on one vCPU, in ring 0 with
    interrupts off: it checks what it inherited and publishes its identity (KINFO) in
    the gate page, where every process reads it at ``KINFO_VA``.  A failing or
    faulting self-test puts the old bytes, registers and MSRs back (rolled back);
 5. update the symbol map and resume.

The previous kernels are kept, so ``rollback`` swaps back to the last one the same way.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmm import abi
from vmm.kernel_build import KDATA, KDATA_LAYOUT, KernelBuildError, KernelImage, assemble

MSR_LSTAR = 0xC000_0082
CODE = (abi.KERNEL_PHYS, KDATA)                                 # stub + 64-bit code
IDT = (abi.KERNEL_PHYS + KDATA + KDATA_LAYOUT["idt"], abi.PAGE)
KINFO = (abi.KERNEL_PHYS + KDATA + KDATA_LAYOUT["kinfo"], abi.KINFO_SIZE)
GATE_KINFO = (abi.KT_GATE + abi.GATE_KINFO, abi.KINFO_SIZE)
NEEDED = ("kernel_selftest", "yield_halted", "syscall_entry", "kinfo_publish", "idt", "gdt")
SAFE_POINT_TRIES = 200
SELFTEST_TIMEOUT = 2.0          # seconds of emulated ring-0 code before we call it hung
GROUPS = (("KDATA", "the kernel's data layout"), ("PC_", "the per-CPU layout"),
          ("KT_", "the kernel page tables"), ("PTE_", "the page-table convention"),
          ("PML4_", "the page-table convention"), ("FT_", "the frame table"),
          ("SYS_", "the system-call numbers"), ("UP_", "the upcall numbers"),
          ("FRAME_", "the activation frame"), ("BI_", "the boot information"),
          ("GDT_", "the GDT"), ("TSS_", "the TSS layout"))


class UpgradeError(Exception):
    """The upgrade was refused or failed; the running kernel is unchanged."""


@dataclass
class UpgradeResult:
    action: str                 # "upgraded", "rolled back" (self-test failed), "rollback"
    old_version: str
    new_version: str
    pause_ms: float             # every vCPU stopped -> every vCPU resumed
    total_ms: float             # the whole command, assembling included
    tries: int                  # pauses until every vCPU was at a safe point
    message: str = ""
    selftest: int = 0           # the self-test's report (0 = pass)
    safe_points: list = field(default_factory=list)    # per vCPU: "user" or "halted"

    @property
    def ok(self) -> bool:
        return self.action in ("upgraded", "rollback")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"ok": self.ok}

    def text(self) -> str:
        if self.action == "rolled back":
            head = f"refused {self.new_version!r} after its self-test; still running " \
                   f"{self.old_version!r}"
        else:
            head = f"{'upgraded to' if self.action == 'upgraded' else 'rolled back to'} " \
                   f"{self.new_version!r} (was {self.old_version!r})"
        return (f"{head}: pause {self.pause_ms:.2f} ms, "
                f"command {self.total_ms:.1f} ms, {self.tries} pause(s) to reach a safe point"
                + (f"\n{self.message}" if self.message else ""))


# --------------------------------------------------------------------------
# Loading and checking a new kernel
# --------------------------------------------------------------------------
def load_kernel(spec: str | Path) -> KernelImage:
    """A kernel source directory (kernel_asm/ or a tree holding one: assembled against
    this VMM's ABI), a build directory or a kernel.bin with its kernel.json beside it."""
    p = Path(spec)
    if p.is_dir():
        if (p / "kernel.bin").is_file() and (p / "kernel.json").is_file():
            return _load_built(p / "kernel.bin")
        if (p / "kernel_asm").is_dir():
            p = p / "kernel_asm"
        if not any(p.glob("*.s")):
            raise UpgradeError(f"{spec}: neither kernel sources (*.s) nor a built kernel "
                               f"(kernel.bin + kernel.json)")
        try:
            return assemble(p, abi.asm_include())
        except KernelBuildError as e:
            raise UpgradeError(f"the new kernel does not assemble: {e}") from None
        except OSError as e:
            raise UpgradeError(f"{spec}: {e}") from None
    if p.is_file():
        return _load_built(p)
    raise UpgradeError(f"{spec}: no such file or directory")


def _load_built(bin_path: Path) -> KernelImage:
    meta_path = bin_path.with_suffix(".json")
    if not meta_path.is_file():
        raise UpgradeError(f"{bin_path}: no {meta_path.name} beside it (symbols and layout "
                           f"are needed; `xomb-vmm build` writes both)")
    try:
        meta = json.loads(meta_path.read_text())
        meta.pop("path", None)
        meta["image"] = bin_path.read_bytes()
        return KernelImage(**meta, path=bin_path)
    except (ValueError, TypeError, OSError) as e:
        raise UpgradeError(f"{meta_path}: not a kernel description: {e}") from None


def incompatibilities(old: KernelImage, new: KernelImage) -> list[str]:
    """Why `new` cannot take over from `old` (empty: it can).  Every convention the old
    kernel was built with must hold unchanged in the new one; new ones may be added."""
    if not new.layout or not old.layout:
        which = "new" if not new.layout else "running"
        return [f"the {which} kernel records no layout (its kernel.json is older than "
                f"rebootless upgrades): nothing to check it against"]
    out = []
    for key, val in sorted(old.layout.items()):
        what = next((w for prefix, w in GROUPS if key.startswith(prefix)), "the ABI")
        if key not in new.layout:
            out.append(f"{what}: {key} is gone (was {val:#x})")
        elif new.layout[key] != val:
            out.append(f"{what}: {key} changed {val:#x} -> {new.layout[key]:#x}")
    missing = [n for n in NEEDED if n not in new.symbols]
    if missing:
        out.append(f"the new kernel lacks {', '.join(missing)}")
    if len(new.image) != len(old.image):
        out.append(f"image size {len(old.image):#x} -> {len(new.image):#x}")
    g = KDATA + KDATA_LAYOUT["gdt"]
    if new.image[g:g + abi.GDT_LIMIT + 1] != old.image[g:g + abi.GDT_LIMIT + 1]:
        out.append("the GDT differs (its selectors are loaded in every CPU)")
    return out


# --------------------------------------------------------------------------
# Swapping
# --------------------------------------------------------------------------
@dataclass
class _Saved:
    """What a swap changes, to put back if the self-test fails."""
    bytes: dict = field(default_factory=dict)       # (pa, n) -> old bytes
    rips: dict = field(default_factory=dict)        # vcpu index -> old rip
    lstar: dict = field(default_factory=dict)       # vcpu index -> old LSTAR


class Upgrader:
    """Kernel upgrades of one machine; keeps the kernels it replaced for rollback."""

    def __init__(self, machine, current: KernelImage):
        self.m = machine
        self.current = current
        self.history: list[KernelImage] = []
        self.lock = threading.Lock()
        self.results: list[UpgradeResult] = []
        self.lstar: dict[int, int] = {}     # vCPU -> LSTAR, read once
        self._symbol_maps: dict = {}
        self.watchdog = _Watchdog()

    # -- the commands ------------------------------------------------------
    def upgrade(self, spec: str | Path | KernelImage) -> UpgradeResult:
        t0 = time.perf_counter()
        new = spec if isinstance(spec, KernelImage) else load_kernel(spec)
        return self._swap_to(new, t0, rollback=False)

    def rollback(self) -> UpgradeResult:
        if not self.history:
            raise UpgradeError("no previous kernel to roll back to")
        return self._swap_to(self.history[-1], time.perf_counter(), rollback=True)

    # -- the mechanism -----------------------------------------------------
    def _swap_to(self, new: KernelImage, t0: float, rollback: bool) -> UpgradeResult:
        with self.lock:
            old = self.current
            bad = incompatibilities(old, new)
            if bad:
                raise UpgradeError("the new kernel is incompatible with the running one: "
                                   + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
            if self.m._debug_owners:
                raise UpgradeError("a debugger or tracer has the guest (breakpoints would be "
                                   "overwritten): detach it first")
            symbols = self._symbols_of(new)        # before the pause: it takes ~0.3 ms
            was_paused = self.m.paused              # by a debugger or the console: stay so
            tries, t_paused, points, tester, snap = self._pause_at_safe_point(old, was_paused)
            try:
                saved = self._install(old, new, snap)
                code, why = self._selftest(tester, new, snap[tester.index])
                if code != 0:
                    self._restore(saved)
                    res = UpgradeResult("rolled back", old.version, new.version, 0.0, 0.0,
                                        tries, f"its self-test failed: {why}; the old kernel "
                                        f"was put back", code, points)
                else:
                    self._adopt(old, new, rollback, symbols)
                    res = UpgradeResult("rollback" if rollback else "upgraded", old.version,
                                        new.version, 0.0, 0.0, tries, safe_points=points)
            finally:
                if not was_paused:
                    self.m.resume()
            res.pause_ms = (time.perf_counter() - t_paused) * 1000.0
            if res.ok:
                res.message = self._gdb_symbols(new)
            res.total_ms = (time.perf_counter() - t0) * 1000.0
            self.results.append(res)
            return res

    @staticmethod
    def _gdb_symbols(new: KernelImage) -> str:
        """gdb reads symbols from a file: write one for the kernel now running."""
        import re as _re
        from vmm import paths
        from vmm.symfile import write_sym_elf
        slug = _re.sub(r"[^A-Za-z0-9.]+", "-", new.version).strip("-") or "kernel"
        out = paths.BUILD / "kernel" / f"running-{slug}-{new.digest[:8]}.sym.elf"
        try:
            if not out.exists():
                write_sym_elf(new.symbols, out)
        except (OSError, RuntimeError) as e:
            return f"(no symbol file for gdb: {e})"
        return f"gdb: symbol-file {out}"

    def _pause_at_safe_point(self, old: KernelImage, was_paused: bool):
        """Pause until every vCPU is at a safe point and one of them can run the
        self-test: saving and restoring its state around the test must lose nothing.
        Returns (tries, time paused, safe point per vCPU, the tester, and each vCPU's
        (regs, sregs) as read at the safe point)."""
        halted = old.symbols["yield_halted"]
        where = ""
        for attempt in range(1, 2 if was_paused else SAFE_POINT_TRIES + 1):
            if not self.m.pause(timeout=2.0):
                self.m.resume()
                if self.m.stopping or not getattr(self.m, "_in_loop", True):
                    raise UpgradeError(f"the machine is not running "
                                       f"({self.m.stop_reason or 'it has not started'})")
                raise UpgradeError("the vCPUs did not stop within 2 s")
            t_paused = time.perf_counter()
            busy, points, snap = [], [], {}
            for v in self.m.vcpus:
                regs, sregs = snap[v.index] = v.get_regs(), v.get_sregs()
                user = sregs.cs.selector & 3 == 3
                points.append("user" if user else "halted")
                if not user and regs.rip != halted:
                    busy.append(f"vCPU {v.index} at {self.m.symbols.describe(regs.rip)}")
            if not busy:
                order = sorted(self.m.vcpus, key=lambda v: points[v.index] == "user")
                tester = next((v for v in order if self._can_test_on(v, *snap[v.index])),
                              None)
                if tester is not None:
                    return attempt, t_paused, points, tester, snap
                busy.append("every vCPU has an event half-delivered")
            where = ", ".join(busy)
            if was_paused:
                raise UpgradeError(f"the machine is paused with {where} in the kernel: "
                                   f"continue it first; nothing was changed")
            self.m.resume()
            time.sleep(0.0002 * attempt)
        raise UpgradeError(f"no safe point after {SAFE_POINT_TRIES} tries (last: {where} in "
                           f"the kernel); nothing was changed")

    def _install(self, old: KernelImage, new: KernelImage, snap: dict) -> _Saved:
        mem, s = self.m.mem, _Saved()
        for pa, n in (CODE, IDT, KINFO, GATE_KINFO):
            s.bytes[(pa, n)] = bytes(mem.read(pa, n))
        for pa, n in (CODE, IDT, KINFO):
            off = pa - abi.KERNEL_PHYS
            mem.write(pa, new.image[off:off + n])
        halted, entry = old.symbols["yield_halted"], old.symbols["syscall_entry"]
        for v in self.m.vcpus:
            regs, sregs = snap[v.index]
            if regs.rip == halted and sregs.cs.selector & 3 == 0:
                s.rips[v.index] = regs.rip
                regs.rip = new.symbols["yield_halted"]     # (the snapshot follows)
                v.set_regs(regs)
            if v.index not in self.lstar:   # only the kernel's boot and we write LSTAR
                self.lstar[v.index] = v.get_msrs([MSR_LSTAR]).get(MSR_LSTAR)
            if self.lstar[v.index] == entry:    # VMX/SVM/QEMU: the kernel's entry (PVM:
                s.lstar[v.index] = entry        # the gate page, which does not move)
                v.set_msrs({MSR_LSTAR: new.symbols["syscall_entry"]})
                self.lstar[v.index] = new.symbols["syscall_entry"]
        return s

    def _restore(self, s: _Saved) -> None:
        for (pa, _), data in s.bytes.items():
            self.m.mem.write(pa, data)
        for v in self.m.vcpus:
            if v.index in s.rips:
                regs = v.get_regs()
                regs.rip = s.rips[v.index]
                v.set_regs(regs)
            if v.index in s.lstar:
                v.set_msrs({MSR_LSTAR: s.lstar[v.index]})
                self.lstar[v.index] = s.lstar[v.index]

    def _symbols_of(self, new: KernelImage):
        """The machine's symbol map with `new`'s kernel symbols (kept per kernel:
        sorting ~6000 symbols takes longer than the whole pause)."""
        key = (new.digest, new.version)
        if key not in self._symbol_maps:
            from vmm.dump import Symbols
            progs = {k: v for k, v in getattr(self.m.boot, "symbols", {}).items() if ":" in k}
            syms = Symbols({**progs, **new.symbols})
            syms.lookup(0)                  # sort now, not at the first lookup
            self._symbol_maps[key] = syms
        return self._symbol_maps[key]

    def _adopt(self, old: KernelImage, new: KernelImage, rollback: bool, symbols) -> None:
        if rollback:
            self.history.pop()
        else:
            self.history.append(old)
        self.current = new
        self.m.symbols = symbols
        self.m.kernel_image = new

    def _selftest(self, v, new: KernelImage, state) -> tuple[int, str]:
        """Run the new kernel's kernel_selftest on vCPU v, on that vCPU's own thread
        (Machine.run_parked), and put the vCPU back.  Returns (0, "") or (the failed
        check or -1, why)."""
        if getattr(self.m, "_in_loop", False):
            return self.m.run_parked(v, lambda: self._selftest_on(v, new, state),
                                     timeout=SELFTEST_TIMEOUT + 3)
        return self._selftest_on(v, new, state)

    def _selftest_on(self, v, new: KernelImage, state) -> tuple[int, str]:
        """`state` is v's (regs, sregs) at the safe point.  A halted tester is in ring 0
        already; one in user mode gets the kernel's segments for the test.  Either has
        nothing on its kernel stack below the syscall frame at the top, and no event
        pending (_can_test_on): interrupts are off, so nothing is delivered into the test."""
        from vmm._kvm_cffi import lib
        regs, sregs = state
        user = sregs.cs.selector & 3 == 3
        mp = None if user else v.get_mp_state()
        try:
            r = v.get_regs()
            r.rip = new.symbols["kernel_selftest"]
            r.rsp = new.stack_tops[v.index] - 0x1000
            r.rflags = 0x2                  # interrupts off
            v.set_regs(r)
            if user:
                sr = v.get_sregs()
                for seg, sel, code in ((sr.cs, abi.GDT_KCS, True), (sr.ss, abi.GDT_KDS, False)):
                    seg.selector, seg.dpl, seg.base, seg.limit, seg.present, seg.s = sel, 0, 0, \
                        0xFFFF_FFFF, 1, 1
                    seg.type, seg.l, seg.db, seg.g, seg.unusable = (0xB, 1, 0, 1, 0) if code \
                        else (0x3, 0, 1, 1, 0)
                v.set_sregs(sr)
            elif mp != lib.KVM_MP_STATE_RUNNABLE:
                v.set_mp_state(lib.KVM_MP_STATE_RUNNABLE)
            v.immediate_exit = 0
            self.watchdog.arm(v, SELFTEST_TIMEOUT)
            try:
                while True:
                    reason = v.run()
                    if reason == lib.KVM_EXIT_IO and v.io.direction == lib.KVM_EXIT_IO_OUT:
                        port, data = v.io.port, bytes(v.io_data())
                        value = int.from_bytes(data[:4].ljust(4, b"\0"), "little")
                        if port == abi.SELFTEST_PORT:
                            return value, "" if value == 0 else f"check {value} failed"
                        if port == abi.PANIC_PORT:
                            return -1, f"it faulted (vector {data[0]})"
                        return -1, f"unexpected port write {port:#x}"
                    if reason == lib.KVM_EXIT_INTR and not self.watchdog.fired:
                        v.immediate_exit = 0
                        continue
                    from vmm.kvm import exit_name
                    return -1, ("it hung" if reason == lib.KVM_EXIT_INTR
                                else f"it stopped with {exit_name(reason)}")
            finally:
                self.watchdog.disarm()
                v.immediate_exit = 0
        finally:
            if user:
                v.set_sregs(sregs)
            v.set_regs(regs)
            if mp is not None and mp != lib.KVM_MP_STATE_RUNNABLE:
                v.set_mp_state(mp)

    def _can_test_on(self, v, regs, sregs) -> bool:
        """No event half-delivered on v.  KVM reports and restores exceptions, interrupts
        and NMIs (KVM_GET/SET_VCPU_EVENTS), but not a *software* exception (int3, int n,
        into): it expects rip to still point at the instruction.  On PVM a ring-3 int3
        -- the syscall gate -- has already advanced rip when we pause, and rewriting the
        registers drops the queued #BP: the process would run on past the gate.  So a
        vCPU in user mode just after such an instruction is not used."""
        e = v.get_vcpu_events()
        if e.exception.injected or e.exception.pending or e.interrupt.injected \
                or e.nmi.injected or e.nmi.pending:
            return False
        if sregs.cs.selector & 3 != 3:
            return True
        rip = regs.rip
        before = self.m.mem.read_virt(sregs.cr3, rip - 2, 2) if rip >= 2 else None
        return before is not None and before[1] not in (0xCC, 0xCE) and before[0] != 0xCD


class _Watchdog:
    """Kicks a vCPU whose self-test runs too long (one thread for every upgrade: starting
    a thread per test would cost more than the test)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.vcpu, self.deadline, self.fired = None, 0.0, False
        self.thread = None

    def arm(self, vcpu, seconds: float) -> None:
        with self.cond:
            self.vcpu, self.deadline, self.fired = vcpu, time.monotonic() + seconds, False
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="upgrade-watchdog",
                                               daemon=True)
                self.thread.start()
            self.cond.notify()

    def disarm(self) -> None:
        with self.cond:
            self.vcpu = None
            self.cond.notify()

    def _run(self) -> None:
        from vmm.vcpu import kick
        with self.cond:
            while True:
                if self.vcpu is None:
                    self.cond.wait()
                    continue
                left = self.deadline - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                self.fired = True
                kick(self.vcpu)
                self.vcpu = None


def upgrader_for(machine) -> Upgrader:
    """The machine's Upgrader, made on first use.  The running kernel is the one the
    machine was booted with (``machine.kernel_image``), else the built kernel if its code
    is what is in guest memory."""
    up = getattr(machine, "upgrader", None)
    if up is not None:
        return up
    current = getattr(machine, "kernel_image", None) or getattr(machine.boot, "kernel_image", None)
    if current is None:
        from vmm import paths
        built = paths.BUILD / "kernel" / "kernel.bin"
        if built.is_file():
            k = _load_built(built)
            if bytes(machine.mem.read(*CODE)) == k.image[:KDATA]:
                current = k
    if current is None:
        raise UpgradeError("the running kernel is unknown (booted from an image without its "
                           "kernel.json): cannot check compatibility")
    machine.upgrader = Upgrader(machine, current)
    return machine.upgrader


def read_kinfo(mem) -> dict:
    """The running kernel's identity as published in the gate page."""
    raw = bytes(mem.read(*GATE_KINFO))
    magic = int.from_bytes(raw[:8], "little")
    ver = raw[abi.KINFO_VERSION:abi.KINFO_VERSION + abi.KINFO_VERSION_MAX].split(b"\0")[0]
    return {"valid": magic == abi.KINFO_MAGIC, "version": ver.decode(errors="replace"),
            "build": f"{int.from_bytes(raw[8:16], 'little'):016x}"}


def measure(built, rounds: int = 10, ram: int = 128 << 20, kvm_path: str = "/dev/kvm",
            ncpus: int = 2) -> dict:
    """For `xomb-vmm bench`: upgrade a machine running `ticker` (one vCPU in user mode,
    the other halted) back and forth between the built kernel and a copy with another
    version, `rounds` times.  Returns {"pause_ms": [...], "command_ms": [...]}; the
    command includes loading the (already assembled) kernel image."""
    import shutil
    import tempfile
    from devices.console import ConsoleIO, MemorySink
    from vmm import hostinfo, paths
    from vmm.bootimage import build_boot_state
    from vmm.machine import Machine
    with tempfile.TemporaryDirectory(prefix="xomb-upgrade-") as tmp:
        src = Path(tmp) / "kernel_asm"
        shutil.copytree(paths.KERNEL_SRC, src)
        (src / "VERSION").write_text(f"{built.kernel.version} (bench)\n")
        other = load_kernel(src)
    state = build_boot_state(built.kernel, built.programs, ram_bytes=ram,
                             host=hostinfo.host_type(), cmdline="ticker 1000000 1",
                             run_mode=abi.RUN_COMMAND, tsc_khz=hostinfo.tsc_khz(kvm_path),
                             ncpus=ncpus)
    sink = MemorySink()
    m = Machine(state, console=ConsoleIO(sink, None), cpus=ncpus, kvm_path=kvm_path)
    m.kernel_image = built.kernel
    t = threading.Thread(target=lambda: m.run(timeout=120), daemon=True)
    t.start()
    out = {"pause_ms": [], "command_ms": []}
    try:
        if not sink.wait_for(b"tick 3 ", 30):
            raise UpgradeError("the benchmark guest did not start ticking")
        up = upgrader_for(m)
        for i in range(rounds):
            r = up.upgrade(other) if i % 2 == 0 else up.rollback()
            if not r.ok:
                raise UpgradeError(r.text())
            out["pause_ms"].append(r.pause_ms)
            out["command_ms"].append(r.total_ms)
            time.sleep(0.01)
    finally:
        m.request_stop(0, "benchmark done")
        t.join(10)
        m.close()
    return out
