"""`trace syscalls on|off`: every system call with decoded arguments, result and address space.

Internal (never stopping) breakpoints of the Debugger on kernel symbols, identical on every
host because both syscall entries (VMX `syscall_entry`, PVM gate `vec3`) meet there:

    syscall_common   rax = number, rdi rsi rdx r10 r8 r9 = arguments, rcx = return rip,
                     cr3 = the caller's address space
    sys_return       rax = result (rdx = pages done for MAP / RELEASE), back to the caller
    sys_reflect      an unknown number: reflected to the libOS as a SYSCALL upcall
    upcall_enter     a successful YIELD enters the target (cr3 = target, rdi = upcall)

Each hit costs two exits (the breakpoint and one single step over it): tracing is a
debugging feature, the guest behaves exactly as without it, only slower.
"""
from __future__ import annotations

import time

from vmm import abi

OWNER = "systrace"
NAMES = {v: k for k, v in abi.SYSCALLS.items()}
ARGS = {
    "CREATE": ["as", "va", "level", "donor_va"],
    "MAP": ["dst_as", "dst_va", "src_as", "src_va", "n", "flags"],
    "AS_CREATE": ["donor_va", "entry", "slot"],
    "YIELD": ["as", "upcall", "arg0", "arg1"],
    "RELEASE": ["as", "va", "n"],
}
UPCALL_NAMES = {v: k for k, v in abi.UPCALLS.items()}


def map_flags(f: int) -> str:
    names = [n for n, b in (("W", abi.MAP_W), ("X", abi.MAP_X), ("MOVE", abi.MAP_MOVE)) if f & b]
    rest = f & ~abi.MAP_FLAGS
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def decode_args(nr: int, regs: list[int]) -> dict:
    name = NAMES.get(nr)
    if name is None:
        return {}
    out = {}
    for i, a in enumerate(ARGS[name]):
        out[a] = regs[i]
    return out


def format_args(nr: int, args: dict) -> str:
    parts = []
    for k, v in args.items():
        if k == "flags":
            parts.append(f"{k}={map_flags(v)}")
        elif k == "upcall":
            parts.append(f"{k}={UPCALL_NAMES.get(v, v)}")
        elif k in ("as", "dst_as", "src_as", "slot", "level", "n"):
            parts.append(f"{k}={v}")
        else:
            parts.append(f"{k}={v:#x}")
    return ", ".join(parts)


def format_record(r: dict) -> str:
    name = r["name"]
    s = f"[AS {r['as']:#x}] {name}({format_args(r['nr'], r['args'])})"
    res = r.get("result")
    if r.get("outcome") == "return":
        if res is not None and res >= 1 << 63:
            res -= 1 << 64
        s += f" = {abi.error_name(res) if res < 0 else res}"
        if r.get("done") is not None:
            s += f" (done {r['done']})"
    elif r.get("outcome") == "yield":
        s += f" -> entered AS {r['to_as']:#x} ({UPCALL_NAMES.get(r['upcall'], r['upcall'])})"
    elif r.get("outcome") == "reflect":
        s += " -> reflected to the libOS (SYSCALL upcall)"
    else:
        s += " ..."
    return s


class SyscallTrace:
    def __init__(self, debugger, sink=None, keep: int = 10000):
        self.dbg = debugger
        self.sink = sink                # callable(record dict) on the vCPU thread
        self.records: list[dict] = []
        self.keep = keep
        self.pending: dict | None = None
        self.enabled = False
        self._bps: list[int] = []

    def on(self):
        if self.enabled:
            return
        syms = self.dbg.m.boot.symbols
        for name, cb in (("syscall_common", self._entry), ("sys_return", self._return),
                         ("sys_reflect", self._reflect), ("upcall_enter", self._upcall)):
            if name in syms:
                self._bps.append(self.dbg.add_breakpoint(syms[name], owner=OWNER, callback=cb).id)
        self.enabled = True

    def off(self):
        d = self.dbg
        with d._lock:
            pas = {d.bps.pop(i).pa for i in self._bps if i in d.bps}
            for pa in pas:
                d._sync(pa)
            if d.m.paused or not d.m._in_loop:
                d._apply_debug()
        self._bps.clear()
        self.enabled = False
        self.pending = None

    def _emit(self, rec: dict):
        self.records.append(rec)
        if len(self.records) > self.keep:
            del self.records[: len(self.records) - self.keep]
        if self.sink is not None:
            try:
                self.sink(rec)
            except Exception:
                pass

    def _finish(self, **kw):
        p = self.pending
        if p is None:
            return
        self.pending = None
        p.update(kw)
        self._emit(p)

    def _entry(self, dbg, bp, regs):
        if self.pending is not None:
            self._finish(outcome="unknown")
        nr = regs.rax
        args = decode_args(nr, [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9])
        self.pending = {"t": time.time(), "as": dbg.cr3() & abi.PTE_ADDR, "nr": nr,
                        "name": NAMES.get(nr, f"#{nr}"), "args": args, "rip": regs.rcx}

    def _return(self, dbg, bp, regs):
        nr = self.pending["nr"] if self.pending else None
        done = regs.rdx if nr in (abi.SYSCALLS["MAP"], abi.SYSCALLS["RELEASE"]) else None
        self._finish(outcome="return", result=regs.rax, done=done)

    def _reflect(self, dbg, bp, regs):
        self._finish(outcome="reflect")

    def _upcall(self, dbg, bp, regs):
        if self.pending is not None and self.pending["nr"] == abi.SYSCALLS["YIELD"]:
            self._finish(outcome="yield", to_as=dbg.cr3() & abi.PTE_ADDR, upcall=regs.rdi)
