"""The inspection console: a thin shell over vmm.inspect.Inspector.

    Commands(inspector).execute("pt --json")  -> {"ok": True, "cmd": "pt", "data": ..., "text": ...}
    Shell(backend).cmdloop()                  # readline history + tab completion, rich output

`backend` is anything with `execute(line) -> dict` and `completions() -> list[str]`: a local
Commands (``xomb-vmm boot --console``, Ctrl-A c) or a control-socket client
(``xomb-vmm attach PATH``).  Every command takes ``--json`` for machine-readable output.
"""
from __future__ import annotations

import cmd
import json
import os
import shlex
import sys

from vmm import render as R
from vmm.inspect import InspectError, Inspector, parse_int
from vmm.systrace import format_record

HELP = {
    "regs": "regs                 general registers; RIP with symbol and disassembly",
    "cregs": "cregs                CR0 CR2 CR3 CR4 CR8 EFER, decoded",
    "sregs": "sregs                control registers, segments, GDT/IDT/TSS decoded",
    "pt": "pt [AS] [--kernel]   page-table tree of an address space (default: current CR3)",
    "vtop": "vtop ADDR [AS]       step-by-step page walk of a virtual address",
    "x": "x ADDR [N] [AS]      hexdump N bytes of virtual memory (symbols allowed)",
    "xp": "xp PADDR [N]         hexdump N bytes of physical memory",
    "dis": "dis ADDR|SYM [N]     disassemble N instructions (kernel and libOS symbols)",
    "as": "as                   the address-space tree read from the page tables",
    "break": "break [-p] ADDR|SYM  breakpoint (virtual, or -p physical); no argument: list",
    "hbreak": "hbreak ADDR|SYM      hardware breakpoint (falls back to a patch where there are none)",
    "delete": "delete ID|ADDR|SYM|all  remove breakpoints",
    "info": "info                 list breakpoints",
    "step": "step [N]             single-step N instructions (machine stopped)",
    "next": "next                 step over a call",
    "cont": "cont [WAIT]          continue (WAIT seconds: wait for the next stop)",
    "stop": "stop                 pause the vCPU",
    "stats": "stats                VM exits by reason and by device, per vCPU, with rates",
    "trace": "trace syscalls on|off|show [N]  trace every system call",
    "devices": "devices              device state: console rings, platform page",
    "iommu": "iommu                IOMMU state",
    "status": "status               running or paused, last stop, debug facilities of this host",
    "kernel": "kernel               the running kernel's version (as userspace sees it) and upgrades",
    "upgrade": "upgrade DIR|FILE | upgrade --rollback   swap the kernel under the running system",
    "help": "help [CMD]           this list",
}
COMMANDS = sorted(HELP) + ["quit"]


class Commands:
    """Parses one console line and runs it on an Inspector."""

    def __init__(self, inspector: Inspector, trace_sink=None):
        self.ins = inspector
        self.trace_sink = trace_sink
        if trace_sink is not None:
            inspector.systrace.sink = lambda r: trace_sink(format_record(r))

    def completions(self) -> list[str]:
        syms = [n for n in getattr(self.ins.m.boot, "symbols", {})]
        return COMMANDS + syms

    def execute(self, line: str) -> dict:
        try:
            words = shlex.split(line)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        js = "--json" in words
        words = [w for w in words if w != "--json"]
        if not words:
            return {"ok": True, "cmd": "", "data": None, "text": ""}
        c, args = words[0], words[1:]
        try:
            data = self.run(c, args)
        except (InspectError, ValueError, IndexError, KeyError) as e:
            msg = str(e) if not isinstance(e, (IndexError, KeyError)) else f"bad arguments: {e}"
            return {"ok": False, "cmd": c, "error": msg or f"usage: {HELP.get(c, c)}"}
        except Exception as e:                     # never kill the console
            return {"ok": False, "cmd": c, "error": f"{type(e).__name__}: {e}"}
        out = {"ok": True, "cmd": c, "data": data}
        if not js:
            out["text"] = R.render(c, data) if c not in ("help",) else data
        return out

    def run(self, c: str, a: list[str]):
        ins = self.ins
        if c == "help":
            if a and a[0] in HELP:
                return HELP[a[0]]
            fac = ins.dbg.facilities()
            return "\n".join(HELP[k] for k in sorted(HELP)) + "\n\nthis host: " + \
                "; ".join(f"{k} {v}" for k, v in fac.items())
        if c == "regs":
            return ins.regs(int(a[0]) if a else 3)
        if c == "cregs":
            return ins.cregs()
        if c == "sregs":
            return ins.sregs()
        if c == "pt":
            kernel = "--kernel" in a
            a = [x for x in a if x != "--kernel"]
            return ins.pt(a[0] if a else None, kernel=kernel)
        if c == "vtop":
            return ins.vtop(a[0], a[1] if len(a) > 1 else None)
        if c == "x":
            return ins.x(a[0], parse_int(a[1]) if len(a) > 1 else 64, a[2] if len(a) > 2 else None)
        if c == "xp":
            return ins.xp(a[0], parse_int(a[1]) if len(a) > 1 else 64)
        if c == "dis":
            return ins.dis(a[0] if a else ins.regs(0)["rip"], parse_int(a[1]) if len(a) > 1 else 10)
        if c == "as":
            return ins.as_tree()
        if c in ("break", "hbreak"):
            if not a:
                return ins.breakpoints()
            phys = "-p" in a
            a = [x for x in a if x != "-p"]
            return ins.break_(a[0], phys=phys, kind=c)
        if c == "info":
            return ins.breakpoints()
        if c == "delete":
            if not a:
                raise InspectError("usage: " + HELP["delete"])
            w = a[0]
            return ins.delete(int(w) if w.isdigit() else w)
        if c == "step":
            return ins.step(parse_int(a[0]) if a else 1)
        if c == "next":
            return ins.next()
        if c == "cont":
            return ins.cont(float(a[0]) if a else None)
        if c == "stop":
            return ins.stop()
        if c == "stats":
            return ins.stats()
        if c == "trace":
            if not a or a[0] != "syscalls":
                raise InspectError("usage: " + HELP["trace"])
            if len(a) > 1 and a[1] == "show":
                n = parse_int(a[2]) if len(a) > 2 else 20
                return [format_record(r) for r in ins.systrace.records[-n:]]
            on = None if len(a) < 2 else {"on": True, "off": False}[a[1]]
            return ins.trace("syscalls", on)
        if c == "devices":
            return ins.devices()
        if c == "iommu":
            return ins.iommu()
        if c == "status":
            return ins.status()
        if c == "kernel":
            return ins.kernel()
        if c == "upgrade":
            if a == ["--rollback"]:
                return ins.upgrade(None, rollback=True)
            if len(a) == 2 and a[0] == "--kernel" or len(a) == 1 and not a[0].startswith("-"):
                return ins.upgrade(a[-1])
            raise InspectError(f"usage: {HELP['upgrade']}")
        raise InspectError(f"unknown command {c!r} (try help)")


class Shell(cmd.Cmd):
    """Interactive shell over a backend; `quit` (or Ctrl-D) leaves it."""

    prompt = "(xomb) "
    intro = "xomb-vmm console: help lists the commands, quit (Ctrl-D) leaves"

    def __init__(self, backend, stdin=None, stdout=None, history: str | None = None):
        super().__init__(stdin=stdin, stdout=stdout)
        self.backend = backend
        self.history = history if history is not None else os.path.expanduser("~/.xomb_vmm_history")
        self._words = None
        try:
            from rich.console import Console
            self.rich = Console(file=self.stdout, highlight=False, soft_wrap=True)
        except Exception:
            self.rich = None

    def preloop(self):
        try:
            import readline
            readline.set_completer_delims(" \t")
            if os.path.exists(self.history):
                readline.read_history_file(self.history)
        except Exception:
            pass

    def postloop(self):
        try:
            import readline
            readline.set_history_length(1000)
            readline.write_history_file(self.history)
        except Exception:
            pass

    def completenames(self, text, *ignored):
        return [c for c in COMMANDS if c.startswith(text)]

    def completedefault(self, text, line, begidx, endidx):
        if self._words is None:
            try:
                self._words = self.backend.completions()
            except Exception:
                self._words = list(COMMANDS)
        w = line.split()
        if w and w[0] == "trace":
            return [x for x in ("syscalls", "on", "off", "show") if x.startswith(text)]
        return [x for x in self._words if x.startswith(text)][:200]

    def emptyline(self):
        return False

    def do_quit(self, arg):
        return True

    do_EOF = do_quit

    def print(self, text: str, error: bool = False):
        if self.rich is not None:
            try:
                self.rich.print(f"[red]{text}[/red]" if error else text)
                return
            except Exception:
                pass
        self.stdout.write(R.plain(text) + "\n")

    def default(self, line):
        r = self.backend.execute(line)
        if not r.get("ok"):
            self.print("error: " + str(r.get("error")).replace("[", "("), error=True)
        elif "text" in r:
            if r["text"]:
                self.print(r["text"] if isinstance(r["text"], str) else str(r["text"]))
        else:
            self.stdout.write(json.dumps(r.get("data"), default=str) + "\n")
        self.stdout.flush()
        return False

    def do_help(self, arg):
        return self.default("help " + arg)


def run_local(inspector: Inspector, stdin=None, stdout=None) -> None:
    """The local console (on the terminal, the VM keeps running behind it)."""
    out = stdout or sys.stdout

    def sink(line):
        out.write(f"\r[trace] {line}\r\n")
        out.flush()
    Shell(Commands(inspector, trace_sink=sink), stdin=stdin, stdout=stdout).cmdloop()
