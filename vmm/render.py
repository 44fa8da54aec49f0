"""Text renderings of the Inspector's plain data (rich markup; `plain()` strips it).

One function per command: render(cmd, data) -> str.  The console prints it with rich;
the control socket sends it to `attach` clients; `--json` skips rendering altogether.
"""
from __future__ import annotations

import re

from vmm import abi
from vmm.dump import GPRS


def plain(text: str) -> str:
    return re.sub(r"\[/?[a-z #0-9_]*\]", "", text)


def _hexdump(addr: int, data: bytes) -> list[str]:
    out = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        hx = " ".join(f"{b:02x}" for b in chunk)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"[cyan]{addr + off:#018x}[/cyan]  {hx:<47}  {asc.replace('[', '(')}")
    return out


def r_regs(d) -> str:
    sym = f" <{d['symbol']}>" if d.get("symbol") else ""
    lines = [f"[bold]RIP[/bold] {d['rip']:#018x}{sym}  CPL {d['cpl']}  CR3 {d['cr3']:#x}"
             f"  ({d.get('program') or 'unknown program'})"
             f"{'  [yellow]paused[/yellow]' if d.get('paused') else ''}",
             f"RFLAGS {d['rflags']:#010x} [{d['rflags_flags']}]"]
    for i in range(0, 16, 4):
        lines.append("  ".join(f"{n.upper():>3} {d[n]:#018x}" for n in GPRS[i:i + 4]))
    lines += d.get("disasm", [])
    return "\n".join(lines)


def r_cregs(d) -> str:
    return "\n".join([f"CR0  {d['cr0']:#018x} [{d['cr0_flags']}]", f"CR2  {d['cr2']:#018x}",
                      f"CR3  {d['cr3']:#018x}", f"CR4  {d['cr4']:#018x} [{d['cr4_flags']}]",
                      f"CR8  {d['cr8']:#018x}", f"EFER {d['efer']:#018x} [{d['efer_flags']}]"])


def r_sregs(d) -> str:
    lines = [r_cregs(d), "[bold]segments[/bold]"]
    for n, s in d["segments"].items():
        lines.append(f"  {n.upper():<3} {s['selector']:#06x} base {s['base']:#018x} limit "
                     f"{s['limit']:#x} type {s['type']:#x} dpl {s['dpl']}"
                     f"{' L' if s['l'] else ''}{' P' if s['present'] else ' NP'}"
                     f"{' unusable' if s['unusable'] else ''}")
    g = d["gdt"]
    lines.append(f"[bold]GDT[/bold] base {g['base']:#x} limit {g['limit']:#x}")
    for e in g["entries"]:
        lines.append(f"  {e['selector']:#06x} {e['kind']:<16} dpl {e['dpl']} base {e['base']:#x}"
                     f" limit {e['limit']:#x}{' P' if e['present'] else ' NP'}")
    i = d["idt"]
    lines.append(f"[bold]IDT[/bold] base {i['base']:#x} limit {i['limit']:#x}")
    for e in i["entries"]:
        rng = f"{e['vector']:3}" + (f"-{e['to']}" if e.get("to") else "")
        lines.append(f"  {rng:<8} {e['type']:<9} dpl {e['dpl']} ist {e['ist']} -> "
                     f"{e['target']:#x} <{e['symbol']}>")
    t = d["tss"]
    if "rsp0" in t:
        lines.append(f"[bold]TSS[/bold] base {t['base']:#x} limit {t['limit']:#x} rsp0 "
                     f"{t['rsp0']:#x} iomap {t['iomap_base']:#x} ist "
                     + " ".join(f"{x:#x}" for x in t["ist"] if x) or "none")
    return "\n".join(lines)


def _size(n: int) -> str:
    for u, s in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << s and n % (1 << s) == 0:
            return f"{n >> s}{u}"
    return str(n)


def r_pt(d) -> str:
    f = d["frame"]
    lines = [f"[bold]address space {d['cr3']:#x}[/bold]  entry {d['entry']:#x}  holds "
             f"{f.get('count', 0)} pages  ({d['leaves']} leaf entries, {d['ms']:.1f} ms)"]
    level_of = {"PML4": 4, "PDPT": 3, "PD": 2, "PT": 1}

    def walk(children, depth):
        pad = "  " * depth
        for c in children:
            k = c["kind"]
            if k == "leaf":
                sz = c["page_size"] * c["pages"]
                flags = " ".join(c["flags"])
                lines.append(f"{pad}[{c['index']:3}] {c['va']:#018x}-{c['va'] + sz:#018x} -> "
                             f"{c['pa']:#x}  {c['pages']} x {_size(c['page_size'])}  "
                             f"[green]{flags}[/green]")
            elif k == "slot":
                h = c["index"] - abi.PML4_HANDLE0
                what = "parent" if h == 1 else f"child handle {h}"
                lines.append(f"{pad}[{c['index']:3}] [magenta]slot[/magenta] {what} -> "
                             f"AS {c['root']:#x}")
            elif k == "not-present":
                what = "entry point" if depth == 1 and c["index"] == abi.PML4_INFO else "raw"
                lines.append(f"{pad}[{c['index']:3}] not present ({what}) {c['entry']:#x}")
            else:
                tag = {"self-map": " [blue]self-map[/blue] (not descended)",
                       "kernel": " [blue]kernel half[/blue] (not descended; pt --kernel)"}.get(k, "")
                sh = c.get("shared_with")
                if sh:
                    tag += " [yellow]shared with " + ", ".join(f"{r:#x}" for r in sh[:4]) + \
                        (f" +{len(sh) - 4}" if len(sh) > 4 else "") + "[/yellow]"
                lines.append(f"{pad}[{c['index']:3}] {c['va']:#018x} {c['level']} @ {c['table']:#x}"
                             f" region {_size(c['region'])} [green]{' '.join(c['flags'])}[/green]{tag}")
                if c.get("children"):
                    walk(c["children"], depth + 1)
    walk(d["tree"], 1)
    return "\n".join(lines)


def r_vtop(d) -> str:
    lines = [f"va {d['va']:#018x} in AS {d['cr3']:#x}"]
    for s in d["steps"]:
        extra = f"  slot -> AS {s['slot_root']:#x}" if s["slot_root"] is not None else ""
        lines.append(f"  {s['level']:<4}[{s['index']:3}] @ {s['entry_addr']:#x} = "
                     f"{s['entry']:#018x}  [green]{' '.join(s['flags']) or '-'}[/green]{extra}")
    if d["present"]:
        fr = d["frame"]
        lines.append(f"  -> pa [bold]{d['pa']:#x}[/bold] ({_size(d['size'])} page, {d['rights']});"
                     f" frame {fr['pfn']:#x} {fr['type']} count {fr.get('count', '-')}")
    else:
        lines.append(f"  -> [red]not mapped[/red]: {d['reason']}")
    return "\n".join(lines)


def r_mem(d) -> str:
    return "\n".join(_hexdump(d["addr"], bytes.fromhex(d["data"])))


def r_dis(d) -> str:
    return "\n".join(d["lines"])


def r_as(d) -> str:
    lines = []

    def walk(n, depth):
        cur = " [bold yellow]<- current[/bold yellow]" if n["current"] else ""
        h = "root" if depth == 0 else f"handle {n['handle']}"
        par = f" parent {n['parent']:#x}" if n["parent"] else ""
        lines.append(f"{'  ' * depth}AS {n['root']:#x} ({h}) {n['program'] or '?'}: "
                     f"{n['held_pages']} pages ({n['held_pages'] * 4} KiB), entry "
                     f"{n['entry']:#x}{par}{cur}")
        for c in n["children"]:
            walk(c, depth + 1)
    walk(d, 0)
    return "\n".join(lines)


def r_stats(d) -> str:
    lines = []
    for v in d["vcpus"]:
        lines.append(f"[bold]vCPU {v['vcpu']}[/bold]: {v['total']} exits in {d['run_s']:.1f} s")
        for k, n in sorted(v["exits"].items(), key=lambda t: -t[1]):
            lines.append(f"  {k:<16} {n:>10}  {v['rates'].get(k, 0):10.1f}/s")
    lines.append("[bold]by device[/bold]" + ("" if d["devices"] else ": none"))
    for k, n in sorted(d["devices"].items()):
        lines.append(f"  {k:<16} {n:>10}  {d['device_rates'].get(k, 0):10.1f}/s")
    c = d.get("console") or {}
    if c:
        lines.append(f"console: {c.get('bytes_out', 0)} bytes out, {c.get('bytes_in', 0)} in, "
                     f"{c.get('doorbells', 0)} doorbells ({c.get('doorbell_exits', 0)} exits)")
    if d.get("interval_s"):
        lines.append(f"(rates over the last {d['interval_s']:.2f} s)")
    return "\n".join(lines)


def r_devices(d) -> str:
    lines = [f"device area at {d['device_area']:#x}, {d['pages']} pages"]
    for dev in d["devices"]:
        lines.append(f"[bold]{dev['name']}[/bold] page {dev['page']} at {dev['gpa']:#x}")
        for name, r in dev.get("rings", {}).items():
            lines.append(f"  ring {name:<3} @ {r['phys']:#x} head {r['head']} tail {r['tail']} "
                         f"used {r['used']}/{r['size']} waiting {r['waiting']}")
        if "doorbell" in dev:
            lines.append(f"  doorbell: {dev['doorbell']}")
        if "registers" in dev:
            lines.append("  registers: " + ", ".join(f"{k} +{v:#x}" for k, v in dev["registers"].items()))
    return "\n".join(lines)


def r_generic(d) -> str:
    if isinstance(d, dict):
        return "\n".join(f"{k}: {_fmt(v)}" for k, v in d.items())
    if isinstance(d, list):
        return "\n".join(r_generic(x) for x in d) or "(none)"
    return str(d)


def _fmt(v):
    if isinstance(v, int) and not isinstance(v, bool) and v > 9:
        return hex(v)
    return str(v)


def r_breakpoints(d) -> str:
    if not d:
        return "no breakpoints"
    out = []
    for b in d:
        where = f"{b['va']:#x}" if b["va"] is not None else f"phys {b['pa']:#x}"
        sym = f" <{b['symbol']}>" if b.get("symbol") else ""
        out.append(f"{b['id']:3}  {b['kind']:<7} {where}{sym} (pa {b['pa']:#x}, {b['method']})"
                   f"  hits {b['hits']}" + (f"  [yellow]{b['note']}[/yellow]" if b.get("note") else ""))
    return "\n".join(out)


def r_stop(d) -> str:
    if d.get("running"):
        return "running" + (f" ({d['note']})" if d.get("note") else "")
    if d.get("reason") == "exited":
        return "the machine stopped"
    sym = f" <{d['symbol']}>" if d.get("symbol") else ""
    bp = f" {d['bp']}" if d.get("bp") else ""
    return f"stopped: {d.get('reason')}{bp} at {d.get('rip', 0):#x}{sym}"


def r_trace(d) -> str:
    if isinstance(d, list):
        return "\n".join(d) or "(no records)"
    return (f"trace syscalls: {'on' if d['enabled'] else 'off'} ({d['records']} records; "
            f"trace syscalls show N)")


def r_iommu(d) -> str:
    return d.get("message") or r_generic(d)


def r_status(d) -> str:
    st = d.get("last_stop")
    lines = [("paused" if d["paused"] else "running") + (" (stopping)" if d["stopping"] else ""),
             f"last stop: {st['reason']} at {st['rip']:#x}" if st else "last stop: none",
             "debug facilities of this host:"]
    lines += [f"  {k:<17} {v}" for k, v in d["facilities"].items()]
    return "\n".join(lines)


def r_delete(d) -> str:
    return "deleted " + ", ".join(str(i) for i in d["deleted"])


def r_kernel(d) -> str:
    lines = [f"kernel {d['version']!r} (build {d['build']})" if d.get("valid")
             else "kernel: no identity published (KINFO_VA)"]
    if d.get("previous"):
        lines.append("rollback to: " + " <- ".join(repr(v) for v in reversed(d["previous"])))
    for u in d.get("upgrades", []):
        lines.append(f"  {u['action']}: {u['old_version']!r} -> {u['new_version']!r}, pause "
                     f"{u['pause_ms']:.2f} ms, command {u['total_ms']:.1f} ms")
    return "\n".join(lines)


RENDER = {"trace": r_trace, "kernel": r_kernel, "upgrade": lambda d: d["text"], "iommu": r_iommu, "status": r_status, "delete": r_delete,
          "stop": lambda d: f"stopped at {d['rip']:#x}",
          "regs": r_regs, "cregs": r_cregs, "sregs": r_sregs, "pt": r_pt, "vtop": r_vtop,
          "x": r_mem, "xp": r_mem, "dis": r_dis, "as": r_as, "stats": r_stats,
          "devices": r_devices, "break": r_breakpoints, "hbreak": r_breakpoints,
          "info": r_breakpoints, "cont": r_stop, "step": r_stop, "next": r_stop}


def render(cmd: str, data) -> str:
    fn = RENDER.get(cmd, r_generic)
    if cmd in ("break", "hbreak") and isinstance(data, dict):
        data = [data]
    return fn(data)
