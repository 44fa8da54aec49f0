"""The CLI side of live inspection (kept out of vmm/cli.py, which only calls in here).

    xomb-vmm boot --console             Ctrl-A c opens the console beside the guest's terminal
    xomb-vmm boot --control PATH        serve the console on a UNIX socket
    xomb-vmm boot --gdb HOST:PORT [--wait-gdb]
    xomb-vmm attach PATH [--json] [-c LINE]...
"""
from __future__ import annotations

import sys


def add_boot_args(p) -> None:
    p.add_argument("--console", action="store_true",
                   help="inspection console: Ctrl-A c opens it beside the guest's terminal")
    p.add_argument("--control", metavar="PATH", help="serve the console on a UNIX socket")
    p.add_argument("--gdb", metavar="HOST:PORT", help="gdb remote stub (target remote HOST:PORT)")
    p.add_argument("--wait-gdb", action="store_true", help="do not start the guest before gdb attaches")


def add_attach_parser(sub) -> None:
    a = sub.add_parser("attach", help="connect a console to a running VM's control socket")
    a.add_argument("path", metavar="PATH")
    a.add_argument("-c", "--command", action="append", metavar="LINE",
                   help="run LINE and exit (repeatable)")
    a.add_argument("--json", action="store_true", help="machine-readable output (with -c)")
    a.set_defaults(func=cmd_attach)


def add_upgrade_parser(sub) -> None:
    u = sub.add_parser("upgrade", help="swap the kernel of a running VM without a reboot "
                                       "(docs/UPGRADE.md)")
    u.add_argument("path", metavar="CONTROL_PATH", help="the VM's --control socket")
    g = u.add_mutually_exclusive_group(required=True)
    g.add_argument("--kernel", metavar="DIR_OR_FILE",
                   help="kernel sources (a kernel_asm directory, or a tree holding one) or a "
                        "built kernel.bin with its kernel.json")
    g.add_argument("--rollback", action="store_true", help="go back to the previous kernel")
    u.add_argument("--json", action="store_true", help="machine-readable result")
    u.set_defaults(func=cmd_upgrade)


def cmd_upgrade(args, t_start) -> int:
    """Exit status 0: the new kernel runs; 1: refused (nothing changed) or rolled back
    after its self-test (the old kernel still runs)."""
    import json
    import os
    import shlex
    from vmm.control import RemoteBackend
    from vmm.cli import CliError
    try:
        b = RemoteBackend(args.path)
    except OSError as e:
        raise CliError(f"upgrade {args.path}: {e.strerror or e}") from None
    try:
        line = "upgrade --rollback" if args.rollback else \
            f"upgrade --kernel {shlex.quote(os.path.abspath(args.kernel))}"
        r = b.execute(line + " --json")
    finally:
        b.close()
    if args.json:
        print(json.dumps(r, default=str))
    if not r.get("ok"):
        if not args.json:
            print(f"xomb-vmm: {r.get('error')}", file=sys.stderr)
        return 1
    d = r.get("data") or {}
    if not args.json:
        print(d.get("text", ""))
    return 0 if d.get("ok") else 1


def wanted(args) -> bool:
    return bool(getattr(args, "console", False) or getattr(args, "control", None)
                or getattr(args, "gdb", None))


class Tools:
    def __init__(self):
        self.inspector = None
        self.server = None
        self.gdb = None

    def close(self):
        for t in (self.server, self.gdb):
            if t is not None:
                try:
                    t.close()
                except Exception:
                    pass


def monitor_hook(getter, term_fd: int = 0):
    """The Ctrl-A c callback: cooked terminal, the shell, raw again."""
    def on_monitor():
        import termios
        from vmm import terminal
        ins = getter()
        if ins is None:
            return
        try:
            saved = termios.tcgetattr(term_fd)
        except termios.error:
            saved = None
        cooked = None
        if saved is not None:
            cooked = list(saved)
            cooked[0] |= termios.ICRNL
            cooked[3] |= termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN
            termios.tcsetattr(term_fd, termios.TCSAFLUSH, cooked)
        try:
            from vmm.console_ui import run_local
            sys.stdout.write("\n")
            run_local(ins)
        except Exception as e:
            sys.stderr.write(f"xomb-vmm: console failed: {e}\n")
        finally:
            if saved is not None:
                termios.tcsetattr(term_fd, termios.TCSAFLUSH, saved)
            sys.stderr.write("xomb-vmm: back to the guest (Ctrl-A c: console)\r\n")
    return on_monitor


def setup(args, machine) -> Tools:
    t = Tools()
    if not wanted(args):
        return t
    from vmm.inspect import Inspector
    t.inspector = Inspector(machine)
    if getattr(args, "control", None):
        from vmm.control import ControlServer
        t.server = ControlServer(args.control, t.inspector).start()
        sys.stderr.write(f"xomb-vmm: control socket {args.control} (xomb-vmm attach {args.control})\n")
    if getattr(args, "gdb", None):
        from vmm.gdbstub import GdbStub
        host, _, port = args.gdb.rpartition(":")
        t.gdb = GdbStub(t.inspector, host or "127.0.0.1", int(port)).start()
        sys.stderr.write(f"xomb-vmm: gdb stub on {host or '127.0.0.1'}:{t.gdb.port} "
                         f"(gdb -ex 'target remote :{t.gdb.port}' build/kernel/kernel.sym.elf)\n")
        try:
            from vmm.symfile import kernel_sym_elf
            kernel_sym_elf(getattr(machine.boot, "symbols", None))
        except Exception as e:
            sys.stderr.write(f"xomb-vmm: no kernel symbol file: {e}\n")
        if getattr(args, "wait_gdb", False):
            sys.stderr.write("xomb-vmm: waiting for gdb to attach before starting the guest\n")
            machine.request_pause()
    if getattr(args, "console", False):
        sys.stderr.write("xomb-vmm: Ctrl-A c opens the inspection console\n")
    return t


def cmd_attach(args, t_start) -> int:
    from vmm.control import RemoteBackend
    from vmm.console_ui import Shell
    from vmm.cli import CliError
    try:
        b = RemoteBackend(args.path)
    except OSError as e:
        raise CliError(f"attach {args.path}: {e.strerror or e}") from None
    try:
        if args.command:
            import json
            status = 0
            for line in args.command:
                r = b.execute(line + (" --json" if args.json else ""))
                if args.json:
                    print(json.dumps(r, default=str))
                elif r.get("ok"):
                    from vmm.render import plain
                    t = r.get("text")
                    print(plain(t if isinstance(t, str) else str(t)))
                else:
                    print(f"error: {r.get('error')}", file=sys.stderr)
                if not r.get("ok"):
                    status = 1
            return status
        Shell(b).cmdloop()
        return 0
    finally:
        b.close()
