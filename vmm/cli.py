"""xomb-vmm: the command line.

    xomb-vmm boot [--mem SIZE] [--cpus N] [--kernel FILE] [--boot-stats]
    xomb-vmm run PROGRAM [ARGS...]      run one program non-interactively, exit with its status
    xomb-vmm build                      build the kernel and the programs
    xomb-vmm bench [--quick] [--json FILE] [--plot FILE.png]   exokernel vs Linux (docs/PERFORMANCE.md)

Every known error prints one line `xomb-vmm: <message>` on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import struct
import shlex
import sys
import time
from pathlib import Path

from vmm import abi

EXIT_USAGE = 2
DEFAULT_MEM = "128M"
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192

try:
    from vmm.bootimage import ImageError
except Exception:                               # pragma: no cover - bootimage not there yet
    class ImageError(ValueError):
        """A kernel image or boot image that cannot boot."""


class CliError(Exception):
    """A bad command line (one-line message)."""


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'128M', '1G', '16384K', '134217728' (bytes); suffixes K/M/G with optional 'B'/'iB'."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text or "")
    if not m:
        raise CliError(f"bad memory size {text!r}: use a number with K, M or G, e.g. 128M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def fmt_size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def check_cpus(n: int) -> int:
    if not 1 <= n <= abi.MAX_CPUS:
        raise CliError(f"--cpus {n}: between 1 and {abi.MAX_CPUS}")
    return n


def check_mem(text: str) -> int:
    n = parse_size(text)
    if n % abi.PAGE:
        raise CliError(f"--mem {text}: must be a multiple of 4K")
    if n < abi.MIN_RAM:
        raise CliError(f"--mem {text}: too small, the minimum is {fmt_size(abi.MIN_RAM)}")
    if n > abi.MAX_RAM:
        raise CliError(f"--mem {text}: too large, the maximum is {fmt_size(abi.MAX_RAM)} "
                       f"({abi.MAX_RAM} bytes)")
    return n


# --------------------------------------------------------------------------
# --kernel FILE
# --------------------------------------------------------------------------
def find_multiboot(img: bytes) -> int | None:
    for off in range(0, min(len(img), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, csum = struct.unpack_from("<III", img, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + csum) & 0xFFFF_FFFF == 0:
            return off
    return None


def validate_kernel_image(img: bytes, name: str = "kernel image") -> None:
    if not img:
        raise ImageError(f"{name}: empty file, not a kernel image")
    if len(img) > abi.KERNEL_MAX:
        raise ImageError(f"{name}: {len(img)} bytes, larger than the {abi.KERNEL_MAX} bytes "
                         f"a kernel may use: not an xomb kernel image")
    if find_multiboot(img) is None:
        raise ImageError(f"{name}: no valid multiboot header (magic {MULTIBOOT_MAGIC:#x}) in "
                         f"the first {MULTIBOOT_SEARCH} bytes: corrupt or not an xomb kernel image")


def parse_map(text: str) -> dict[str, int]:
    """Symbol map beside the image: lines 'ADDR NAME' or 'NAME ADDR' (hex), '#' comments."""
    syms: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2:
            continue
        a, b = parts[0], parts[-1]
        for addr, name in ((a, b), (b, a)):
            try:
                syms[name] = int(addr, 16)
                break
            except ValueError:
                continue
    return syms


def read_kernel_file(path: str) -> bytes:
    """The bytes of a prebuilt flat kernel image, validated (no KVM, no build needed)."""
    p = Path(path)
    try:
        img = p.read_bytes()
    except IsADirectoryError:
        raise CliError(f"--kernel {path}: is a directory, not a kernel image") from None
    except OSError as exc:
        raise CliError(f"--kernel {path}: {exc.strerror}") from None
    validate_kernel_image(img, str(path))
    return img


def _beside(p: Path, suffix: str) -> Path | None:
    for cand in (p.with_suffix(suffix), Path(str(p) + suffix)):
        if cand.is_file():
            return cand
    return None


def load_kernel_file(path: str, img: bytes | None = None):
    """A prebuilt flat kernel image as a kernel_build.KernelImage.

    The image's layout (entry, GDT/IDT/TSS, stacks) comes from the FILE.json that
    `xomb-vmm build` writes beside kernel.bin; symbols from FILE.map if present.
    """
    import json
    p = Path(path)
    if img is None:
        img = read_kernel_file(path)
    try:
        from vmm.kernel_build import KernelImage
    except ImportError as exc:
        raise CliError(f"--kernel: the kernel builder is not available ({exc})") from None
    meta_path = _beside(p, ".json")
    if meta_path is None:
        raise ImageError(f"{path}: no {p.with_suffix('.json').name} beside it: the kernel's "
                         f"layout is unknown (use the kernel.bin that 'xomb-vmm build' writes "
                         f"with its kernel.json and kernel.map)")
    try:
        meta = json.loads(meta_path.read_text())
        meta.pop("path", None)
        meta.pop("image", None)
        map_path = _beside(p, ".map")
        if map_path is not None:
            meta["symbols"] = parse_map(map_path.read_text(errors="replace")) or meta.get("symbols", {})
        return KernelImage(image=img, path=p, **meta)
    except (ValueError, TypeError, OSError) as exc:
        raise ImageError(f"{meta_path}: not a kernel layout file ({exc})") from None


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------
def _known_errors() -> tuple:
    from vmm.kvm import KvmError
    from vmm.machine import MachineError
    errs = [CliError, ImageError, KvmError, MachineError]
    try:
        from vmm.build import BuildError
        errs.append(BuildError)
    except Exception:
        pass
    try:
        from vmm.bootimage import ImageError as BIE
        errs.append(BIE)
    except Exception:
        pass
    try:
        from vmm.lab import LabError
        errs.append(LabError)
    except Exception:
        pass
    return tuple(errs)


def _build_all():
    try:
        from vmm.build import build_all
    except ImportError as exc:
        raise CliError(f"the build system is not available ({exc})") from None
    return build_all()


def _boot_state(args, cmdline: str, run_mode: int):
    from vmm import hostinfo
    from vmm.kvm import Kvm
    ram = check_mem(args.mem)
    img = read_kernel_file(args.kernel) if args.kernel else None
    Kvm(args.kvm_device).close()            # fail fast (before building) without KVM
    kernel = load_kernel_file(args.kernel, img) if args.kernel else None
    built = _build_all()
    kernel = kernel or built.kernel
    from vmm.bootcache import build_boot_state_cached as build_boot_state
    boot = build_boot_state(kernel, built.programs, ram_bytes=ram,
                            host=hostinfo.host_type(), cmdline=cmdline, run_mode=run_mode,
                            tsc_khz=hostinfo.tsc_khz(args.kvm_device),
                            ncpus=getattr(args, "cpus", 1),
                            timer=not getattr(args, "no_timer", False))
    boot.kernel_image = kernel          # the running kernel, for `upgrade` (vmm/upgrade.py)
    return boot


def _run_machine(args, boot, interactive: bool, t_start: float) -> int:
    from vmm.machine import Machine
    from vmm import terminal
    from vmm import inspect_cli
    tools_box: list = []
    hook = inspect_cli.monitor_hook(lambda: tools_box[0].inspector if tools_box else None) \
        if getattr(args, "console", False) else None
    io, term = terminal.stdio_console(interactive, on_monitor=hook)
    devices = _disk_devices(args) + _nic_devices(args)
    machine = Machine(boot, console=io, cpus=args.cpus, kvm_path=args.kvm_device, t_start=t_start,
                      devices=devices)
    try:
        tools_box.append(inspect_cli.setup(args, machine))     # --console/--control/--gdb
        if interactive and term.is_tty:
            terminal.hint()
        with term:
            status = machine.run()
    finally:
        if tools_box:
            tools_box[0].close()
        machine.close()
    if status in (machine.STATUS_QUIT, machine.STATUS_TERM):
        sys.stderr.write(f"\nxomb-vmm: {machine.stop_reason}\n")
    if args.boot_stats:
        print_stats(machine.stats, sys.stderr)
    return status


def _disk_devices(args) -> list:
    if not getattr(args, "disk", None):
        return []
    from devices.disk import Disk
    try:
        return [Disk(args.disk)]
    except (OSError, ValueError) as exc:
        raise CliError(f"--disk {args.disk}: {getattr(exc, 'strerror', None) or exc}") from None


def _nic_devices(args) -> list:
    """The NIC (devices/nic.py): --nic-vfs VFs (0: none), --net uplink, --guest-ip."""
    n = getattr(args, "nic_vfs", 0)
    if not n:
        return []
    if not 1 <= n <= abi.NIC_MAX_VFS:
        raise CliError(f"--nic-vfs {n}: between 0 and {abi.NIC_MAX_VFS}")
    from devices.nic import Nic, parse_guest_ip
    from devices.uplink import UplinkError, parse_net
    try:
        parse_guest_ip(args.guest_ip, args.gateway)     # bad addresses before the uplink opens
        uplink = parse_net(args.net)
        return [Nic(n, uplink, args.guest_ip, args.gateway)]
    except (UplinkError, ValueError) as exc:
        raise CliError(str(exc)) from None


def cmd_mkfs(args, t_start) -> int:
    from vmm import xofs
    try:
        ns = xofs.mkfs(args.image, parse_size(args.size), args.namespaces)
    except (xofs.FsError, OSError) as exc:
        raise CliError(f"mkfs {args.image}: {exc}") from None
    print(f"{args.image}: {len(ns)} namespaces of {ns[0][1]} blocks ({fmt_size(ns[0][1] * 4096)})")
    return 0


def cmd_fs(args, t_start) -> int:
    from vmm import xofs
    op, rest = args.op, args.paths
    need = {"ls": (0, 1), "cat": (1, 1), "put": (2, 2), "get": (2, 2), "rm": (1, 1),
            "mkdir": (1, 1), "check": (0, 0)}
    if op not in need or not need[op][0] <= len(rest) <= need[op][1]:
        raise CliError(f"fs: usage: fs IMAGE [--ns N] ls [PATH] | cat PATH | put HOSTFILE PATH"
                       f" | get PATH HOSTFILE | rm PATH | mkdir PATH | check")
    try:
        with xofs.Fs.open(args.image, args.ns, write=op in ("put", "rm", "mkdir")) as fs:
            if op == "ls":
                for name, t, size in fs.listdir(rest[0] if rest else "/"):
                    print(f"{name}/" if t == abi.FS_DIR else f"{name:<32} {size:>10}")
            elif op == "cat":
                sys.stdout.buffer.write(fs.read(rest[0]))
            elif op == "put":
                fs.write(rest[1], Path(rest[0]).read_bytes())
            elif op == "get":
                Path(rest[1]).write_bytes(fs.read(rest[0]))
            elif op == "rm":
                fs.remove(rest[0])
            elif op == "mkdir":
                fs.mkdir(rest[0])
            elif op == "check":
                bad = fs.check()
                print("\n".join(bad) if bad else f"clean (generation {fs.gen})")
                return 1 if bad else 0
    except (xofs.FsError, OSError) as exc:
        raise CliError(f"fs {args.image}: {exc}") from None
    return 0


def print_stats(stats: dict, stream) -> None:
    b = stats.get("boot_to_prompt_ms")
    line = f"xomb-vmm: boot-to-prompt {b:.2f} ms" if b is not None else \
        "xomb-vmm: boot-to-prompt n/a (the guest never wrote the boot timer)"
    line += f"; VM create {stats.get('create_ms', 0):.2f} ms"
    if "first_exit_us" in stats:
        line += f", first exit after {stats['first_exit_us']:.0f} us"
    exits = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("exits", {}).items()))
    stream.write(line + f"; exits: {exits or 'none'}\n")
    c = stats.get("console")
    if c:
        stream.write(f"xomb-vmm: console {c['bytes_out']} bytes out, {c['bytes_in']} in, "
                     f"{c['doorbells']} doorbells ({c['doorbell_exits']} exited to the VMM)\n")
    if stats.get("nic"):
        from devices.nic import stats_line
        stream.write(stats_line(stats["nic"]) + "\n")
    stream.flush()


def cmd_boot(args, t_start) -> int:
    check_cpus(args.cpus)
    boot = _boot_state(args, cmdline="", run_mode=0)
    return _run_machine(args, boot, interactive=True, t_start=t_start)


def cmd_run(args, t_start) -> int:
    check_cpus(args.cpus)
    cmdline = shlex.join([args.program, *args.args])     # xsh understands the quoting
    if len(cmdline.encode()) >= abi.CMDLINE_MAX:
        raise CliError(f"command line too long ({len(cmdline)} bytes, max {abi.CMDLINE_MAX - 1})")
    boot = _boot_state(args, cmdline=cmdline, run_mode=1)
    return _run_machine(args, boot, interactive=False, t_start=t_start)


def cmd_build(args, t_start) -> int:
    built = _build_all()
    out = sys.stdout
    report = getattr(built, "report", None)
    if report:
        out.write("\n".join(report) + "\n")
    else:
        img = getattr(built.kernel, "image", b"")
        out.write(f"kernel      {len(img):9,} bytes\n")
        for name, elf in sorted(built.programs.items()):
            out.write(f"{name:<11} {len(elf):9,} bytes\n")
        out.write(f"built in {time.perf_counter() - t_start:.2f} s\n")
    return 0


def cmd_bench(args, t_start) -> int:
    from vmm import bench
    try:
        return bench.main(args)
    except bench.BenchError as exc:
        raise CliError(f"bench: {exc}") from None


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xomb-vmm", description="The XOmB exokernel on KVM.")
    p.add_argument("--kvm-device", default="/dev/kvm", metavar="PATH",
                   help="the KVM device (default /dev/kvm)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp):
        sp.add_argument("--mem", default=DEFAULT_MEM, metavar="SIZE",
                        help=f"guest RAM, e.g. 128M or 1G (default {DEFAULT_MEM}, "
                             f"{fmt_size(abi.MIN_RAM)}..{fmt_size(abi.MAX_RAM)})")
        sp.add_argument("--cpus", type=int, default=1, metavar="N",
                        help=f"vCPUs, 1 to {abi.MAX_CPUS} (one VMM thread each)")
        sp.add_argument("--kernel", metavar="FILE", help="a prebuilt flat kernel image (FILE.map beside it)")
        sp.add_argument("--kvm-device", default=argparse.SUPPRESS, metavar="PATH",
                        help="the KVM device (default /dev/kvm)")
        sp.add_argument("--boot-stats", action="store_true",
                        help="print the boot timer and VM-exit counts to stderr")
        sp.add_argument("--disk", metavar="FILE",
                        help="a disk image (xomb-vmm mkfs): one virtual function per namespace")
        sp.add_argument("--net", default="none", metavar="none|tap:NAME|udp:LPORT:HOST:RPORT",
                        help="the NIC's uplink: none (default: the VFs reach only each other), "
                             "a TAP device (root), or a UDP socket tunnel (one frame per "
                             "datagram, unprivileged)")
        sp.add_argument("--guest-ip", default="10.0.2.15/24", metavar="ADDR/PREFIX",
                        help="the guest's address, told through boot information "
                             "(default 10.0.2.15/24)")
        sp.add_argument("--gateway", default=None, metavar="ADDR",
                        help="the guest's gateway (default: .1 of its subnet)")
        sp.add_argument("--nic-vfs", type=int, default=abi.NIC_MAX_VFS, metavar="N",
                        help=f"NIC virtual functions, 0 (no NIC) to {abi.NIC_MAX_VFS} "
                             f"(default {abi.NIC_MAX_VFS})")
        sp.add_argument("--no-timer", action="store_true",
                        help="no periodic tick: a halted CPU wakes only on a device interrupt "
                             "(to study interrupt paths; nothing is preempted)")

    b = sub.add_parser("boot", help="boot the exokernel with an interactive console")
    common(b)
    from vmm import inspect_cli
    inspect_cli.add_boot_args(b)
    inspect_cli.add_attach_parser(sub)
    inspect_cli.add_upgrade_parser(sub)
    b.set_defaults(func=cmd_boot)
    r = sub.add_parser("run", help="run PROGRAM [ARGS...] and exit with its status")
    common(r)
    r.add_argument("--control", metavar="PATH",
                   help="serve the inspection console on a UNIX socket (attach, upgrade)")
    r.add_argument("program")
    r.add_argument("args", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)
    be = sub.add_parser("bench", help="benchmark the exokernel against Linux on this host")
    be.add_argument("--quick", action="store_true", help="fewer rounds and iterations")
    be.add_argument("--rounds", type=int, default=None, metavar="N", help="rounds (default 9, quick 3)")
    be.add_argument("--json", metavar="FILE", help="write the results as JSON")
    be.add_argument("--kernel", metavar="FILE", help="a prebuilt flat kernel image (FILE.json beside it)")
    be.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")
    be.add_argument("--kvm-device", default=argparse.SUPPRESS, metavar="PATH",
                    help="the KVM device (default /dev/kvm)")
    be.set_defaults(func=cmd_bench)
    mk = sub.add_parser("mkfs", help="create a disk image with empty XOFS namespaces")
    mk.add_argument("image")
    mk.add_argument("--size", default="64M", metavar="SIZE", help="image size (default 64M)")
    mk.add_argument("--namespaces", type=int, default=4, metavar="N",
                    help="namespaces = disk VFs (default 4)")
    mk.set_defaults(func=cmd_mkfs)
    fsp = sub.add_parser("fs", help="files in a disk image: ls, cat, put, get, rm, mkdir, check")
    fsp.add_argument("image")
    fsp.add_argument("--ns", type=int, default=0, metavar="N", help="namespace (default 0)")
    fsp.add_argument("op")
    fsp.add_argument("paths", nargs="*")
    fsp.set_defaults(func=cmd_fs)
    bl = sub.add_parser("build", help="build the kernel and the programs")
    bl.set_defaults(func=cmd_build)
    from vmm import lab                 # lab list | new N DIR | grade N [DIR] (docs/labs)
    lab.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = make_parser().parse_args(argv)
    try:
        known = _known_errors()
    except Exception as exc:                 # the KVM binding itself cannot load
        sys.stderr.write(f"xomb-vmm: cannot load the KVM binding: {exc}\n")
        return EXIT_USAGE
    try:
        status = args.func(args, t_start)
    except known as exc:
        sys.stderr.write(f"xomb-vmm: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\nxomb-vmm: interrupted\n")
        return 130
    if not 0 <= status <= 255:
        status = 1 if status else 0
    return status


if __name__ == "__main__":
    sys.exit(main())
