"""Live inspection of a machine: the API under the console, the control socket and gdb.

    ins = Inspector(machine)          # attaches a Debugger
    ins.regs() / ins.cregs() / ins.sregs()
    ins.pt(root=None)                 # page-table tree (current CR3 by default)
    ins.vtop(va) / ins.x(va, n) / ins.xp(pa, n) / ins.dis("sys_map", 8)
    ins.as_tree() / ins.stats() / ins.devices() / ins.iommu()
    ins.break_("sys_map") / ins.delete(1) / ins.step(2) / ins.next() / ins.cont() / ins.stop()
    ins.trace("syscalls", True)

Every method returns plain data (dicts, lists, ints: JSON-serialisable); vmm/render.py turns
it into text.  Register reads need the vCPU stopped or at least between exits: the methods
pause the vCPU around the read when it is running and resume it afterwards (~0.1 ms).
"""
from __future__ import annotations

import contextlib
import struct
import time

from vmm import abi, pagetable
from vmm.debugger import Debugger, DebugError
from vmm.dump import (CR0_BITS, CR4_BITS, EFER_BITS, GPRS, Symbols, _bits, decode_rflags,
                      disassemble)
from vmm.systrace import SyscallTrace

LEVEL = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
FT_NAMES = {abi.FT_KERNEL: "KERNEL", abi.FT_DATA: "DATA", abi.FT_TABLE: "TABLE",
            abi.FT_ROOT: "ROOT", abi.FT_DEVICE: "DEVICE"}
SEG_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"]
FLAG_ORDER = [("P", abi.PTE_P), ("W", abi.PTE_W), ("U", abi.PTE_U), ("PWT", abi.PTE_PWT),
              ("PCD", abi.PTE_PCD), ("A", abi.PTE_A), ("D", abi.PTE_D), ("PS", abi.PTE_PS),
              ("G", abi.PTE_G), ("SLOT", abi.PTE_SLOT), ("NX", abi.PTE_NX)]
_FOLD_MASK = (1 << 64) - 1 ^ abi.PTE_ADDR      # fold leaves with equal flags


class InspectError(Exception):
    """A console request that cannot be done (one-line message)."""


def flag_names(e: int) -> list[str]:
    return [n for n, b in FLAG_ORDER if e & b]


def parse_int(s) -> int:
    if isinstance(s, int):
        return s
    return int(str(s).replace("_", ""), 0)


class Inspector:
    def __init__(self, machine, debugger: Debugger | None = None):
        self.m = machine
        self.dbg = debugger or Debugger(machine)
        self.systrace = SyscallTrace(self.dbg)
        self._prog_syms: dict[str, Symbols] | None = None
        self._prog_cache: dict[int, str | None] = {}
        self._last_stats: tuple[float, dict] | None = None

    @property
    def symbols(self) -> Symbols:
        """The kernel's symbols now (a rebootless upgrade replaces them)."""
        s = self.m.symbols
        return s if isinstance(s, Symbols) else Symbols({})

    # ------------------------------------------------------------ kernel upgrades
    def kernel(self) -> dict:
        """The running kernel: its identity as published to userspace (KINFO in the
        gate page), and the upgrade history."""
        from vmm import upgrade
        info = upgrade.read_kinfo(self.m.mem)
        up = getattr(self.m, "upgrader", None)
        info["previous"] = [k.version for k in up.history] if up else []
        info["upgrades"] = [r.as_dict() for r in up.results] if up else []
        return info

    def upgrade(self, kernel: str | None, rollback: bool = False) -> dict:
        from vmm import upgrade
        try:
            up = upgrade.upgrader_for(self.m)
            res = up.rollback() if rollback else up.upgrade(kernel)
        except upgrade.UpgradeError as e:
            raise InspectError(f"upgrade refused: {e}") from None
        return res.as_dict() | {"text": res.text()}

    # ------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def paused(self):
        """Hold the vCPU still for a consistent read (no-op if already paused)."""
        was = self.m.paused or not self.m._in_loop
        if not was and not self.m.pause(5.0):
            raise InspectError("the vCPU did not stop within 5 s")
        try:
            yield
        finally:
            if not was:
                self.m.resume()

    @property
    def mem(self):
        return self.m.mem.view

    def resolve(self, where) -> int:
        try:
            return self.dbg.resolve(where)
        except DebugError as e:
            syms = self._program_symbols()
            for name, tab in syms.items():
                key = where if ":" in str(where) else f"{name}:{where}"
                for a, n in zip(tab._addrs, tab._names):
                    if n == key:
                        return a
            raise InspectError(str(e)) from None

    def _program_symbols(self) -> dict[str, Symbols]:
        if self._prog_syms is None:
            by: dict[str, dict] = {}
            for n, a in getattr(self.m.boot, "symbols", {}).items():
                if ":" in n:
                    by.setdefault(n.split(":", 1)[0], {})[n] = a
            self._prog_syms = {p: Symbols(s) for p, s in by.items()}
        return self._prog_syms

    def program_of(self, cr3: int) -> str | None:
        """Which program runs in the address space (its _start bytes match)."""
        cr3 &= abi.PTE_ADDR
        if cr3 in self._prog_cache:
            return self._prog_cache[cr3]
        found = None
        syms = getattr(self.m.boot, "symbols", {})
        for prog in self._program_symbols():
            a = syms.get(f"{prog}:main", syms.get(f"{prog}:_start"))     # crt0 is shared
            if a is None:
                continue
            mine = self.dbg.read_virt(a, 64, cr3)
            if not mine:
                continue
            ref = self._elf_bytes(prog, a, 64)
            if ref is not None and ref == mine:
                found = prog
                break
        self._prog_cache[cr3] = found
        return found

    def _elf_bytes(self, prog: str, va: int, n: int) -> bytes | None:
        try:
            from vmm.paths import BUILD
            data = (BUILD / "programs" / prog).read_bytes()
        except OSError:
            return None
        e_phoff, = struct.unpack_from("<Q", data, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
        for i in range(e_phnum):
            p_type, _, p_off, p_va, _, p_filesz = struct.unpack_from("<IIQQQQ", data,
                                                                     e_phoff + i * e_phentsize)
            if p_type == 1 and p_va <= va and va + n <= p_va + p_filesz:
                o = p_off + va - p_va
                return data[o:o + n]
        return None

    def symbol(self, addr: int, cr3: int | None = None) -> str | None:
        if addr >= abi.USER_TOP:
            return self.symbols.lookup(addr)
        if cr3 is None:
            cr3 = self.dbg.cr3()
        prog = self.program_of(cr3)
        if prog is None:
            return None
        s = self._program_symbols()[prog].lookup(addr)
        return s

    # ------------------------------------------------------------ registers
    def regs(self, disasm: int = 3) -> dict:
        with self.paused():
            r = self.dbg.vcpu().get_regs()
            s = self.dbg.vcpu().get_sregs()
        d = {n: getattr(r, n) for n in GPRS + ["rip", "rflags"]}
        d["rflags_flags"] = decode_rflags(r.rflags)
        d["cpl"] = s.cs.selector & 3 if s.cs.dpl == 0 else s.cs.dpl
        d["cr3"] = s.cr3
        d["symbol"] = self.symbol(r.rip, s.cr3)
        d["program"] = self.program_of(s.cr3) if r.rip < abi.USER_TOP else "kernel"
        d["disasm"] = self.dis(r.rip, disasm)["lines"] if disasm else []
        d["paused"] = self.m.paused
        return d

    def cregs(self) -> dict:
        with self.paused():
            s = self.dbg.vcpu().get_sregs()
        return {"cr0": s.cr0, "cr0_flags": _bits(s.cr0, CR0_BITS), "cr2": s.cr2, "cr3": s.cr3,
                "cr4": s.cr4, "cr4_flags": _bits(s.cr4, CR4_BITS), "cr8": s.cr8,
                "efer": s.efer, "efer_flags": _bits(s.efer, EFER_BITS), "apic_base": s.apic_base}

    def sregs(self) -> dict:
        with self.paused():
            s = self.dbg.vcpu().get_sregs()
        segs = {}
        for n in SEG_NAMES:
            g = getattr(s, n)
            segs[n] = {"selector": g.selector, "base": g.base, "limit": g.limit, "type": g.type,
                       "dpl": g.dpl, "present": g.present, "s": g.s, "l": g.l, "db": g.db,
                       "g": g.g, "unusable": g.unusable}
        out = self.cregs()
        out["segments"] = segs
        out["gdt"] = {"base": s.gdt.base, "limit": s.gdt.limit,
                      "entries": self._decode_gdt(s.gdt.base, s.gdt.limit, s.cr3)}
        out["idt"] = {"base": s.idt.base, "limit": s.idt.limit,
                      "entries": self._decode_idt(s.idt.base, s.idt.limit, s.cr3)}
        out["tss"] = self._decode_tss(s.tr.base, s.tr.limit, s.cr3)
        return out

    def _decode_gdt(self, base, limit, cr3) -> list[dict]:
        raw = self.dbg.read_virt(base, limit + 1, cr3) or b""
        out = []
        i = 0
        while i + 8 <= len(raw):
            d, = struct.unpack_from("<Q", raw, i)
            if d:
                acc = (d >> 40) & 0xFF
                flags = (d >> 52) & 0xF
                b = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
                lim = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16)
                e = {"selector": i, "raw": d, "present": acc >> 7 & 1, "dpl": acc >> 5 & 3,
                     "s": acc >> 4 & 1, "type": acc & 0xF, "l": flags >> 1 & 1,
                     "db": flags >> 2 & 1, "g": flags >> 3 & 1, "base": b, "limit": lim}
                if not e["s"]:                       # system: 16-byte TSS descriptor
                    hi = struct.unpack_from("<Q", raw, i + 8)[0] if i + 16 <= len(raw) else 0
                    e["base"] |= (hi & 0xFFFFFFFF) << 32
                    e["kind"] = {0x9: "TSS (available)", 0xB: "TSS (busy)",
                                 0x2: "LDT"}.get(e["type"], "system")
                    out.append(e)
                    i += 16
                    continue
                e["kind"] = ("code" if e["type"] & 8 else "data") + (" 64-bit" if e["l"] else "")
                out.append(e)
            i += 8
        return out

    def _decode_idt(self, base, limit, cr3) -> list[dict]:
        raw = self.dbg.read_virt(base, limit + 1, cr3) or b""
        out = []
        first = None
        for v in range(len(raw) // 16):
            lo, hi = struct.unpack_from("<QQ", raw, v * 16)
            if not lo >> 47 & 1:
                continue
            off = (lo & 0xFFFF) | ((lo >> 48) & 0xFFFF) << 16 | (hi & 0xFFFFFFFF) << 32
            e = {"vector": v, "target": off, "selector": (lo >> 16) & 0xFFFF,
                 "ist": (lo >> 32) & 7, "type": "trap" if (lo >> 40) & 0xF == 0xF else "interrupt",
                 "dpl": (lo >> 45) & 3, "symbol": self.symbols.lookup(off)}
            if v >= 32 and first is not None and first["target"] == off:
                first["to"] = v
                continue
            out.append(e)
            first = e if v >= 32 else None
        return out

    def _decode_tss(self, base, limit, cr3) -> dict:
        raw = self.dbg.read_virt(base, min(limit + 1, 104), cr3)
        if not raw or len(raw) < 104:
            return {"base": base, "limit": limit, "error": "not readable"}
        rsp = struct.unpack_from("<3Q", raw, 4)
        ist = struct.unpack_from("<7Q", raw, 36)
        iomap, = struct.unpack_from("<H", raw, 102)
        return {"base": base, "limit": limit, "rsp0": rsp[0], "rsp1": rsp[1], "rsp2": rsp[2],
                "ist": list(ist), "iomap_base": iomap}

    # ------------------------------------------------------------ memory
    def _cr3(self, root=None) -> int:
        if root is None:
            with self.paused():
                return self.dbg.vcpu().get_sregs().cr3 & abi.PTE_ADDR
        return self.resolve_as(root)

    def resolve_as(self, root) -> int:
        """An address space: a root physical address, 'current', 'init', or a handle path
        like '1/2' is not supported: use the address from `as`."""
        if root in (None, "current", "cur"):
            return self._cr3(None)
        if root == "init":
            return self.m.boot.bootinfo.root_phys
        return parse_int(root) & abi.PTE_ADDR

    def x(self, addr, n: int = 64, root=None) -> dict:
        va = self.resolve(addr)
        cr3 = self._cr3(root)
        data = self.dbg.read_virt(va, n, cr3)
        if data is None:
            raise InspectError(f"{va:#x} is not mapped in address space {cr3:#x}")
        return {"addr": va, "cr3": cr3, "data": data.hex(), "size": len(data)}

    def xp(self, addr, n: int = 64) -> dict:
        pa = parse_int(addr)
        if not self.m.mem.contains(pa, n):
            raise InspectError(f"physical {pa:#x}+{n:#x} is outside RAM ({self.m.mem.size:#x})")
        return {"addr": pa, "data": self.dbg.read_phys(pa, n).hex(), "size": n}

    def dis(self, where, n: int = 10, root=None) -> dict:
        va = self.resolve(where)
        cr3 = self._cr3(root)
        code = self.dbg.read_virt(va, 15 * n, cr3)
        if not code:
            raise InspectError(f"{va:#x} is not mapped in address space {cr3:#x}")
        rip = None
        with contextlib.suppress(Exception):
            if self.m.paused:
                rip = self.dbg.vcpu().get_regs().rip

        class _S:
            def lookup(_, a):
                return self.symbol(a, cr3)
        return {"addr": va, "cr3": cr3,
                "lines": disassemble(code, va, n, _S(), mark=rip)}

    def vtop(self, addr, root=None) -> dict:
        va = self.resolve(addr)
        cr3 = self._cr3(root)
        w = pagetable.walk(self.mem, cr3, va)
        steps = [{"level": LEVEL[s.level], "table": s.table, "index": s.index,
                  "entry_addr": s.table + 8 * s.index, "entry": s.entry,
                  "flags": flag_names(s.entry),
                  "slot_root": (s.entry & abi.PTE_ADDR) if s.entry & abi.PTE_SLOT else None}
                 for s in w.steps]
        out = {"va": va, "cr3": cr3, "steps": steps, "present": w.present, "reason": w.reason}
        if w.present:
            out.update(pa=w.pa, size=w.size, rights=pagetable.rights_str(w.rights),
                       frame=self.frame(w.pa))
        return out

    def frame(self, pa: int) -> dict:
        pfn = pa >> 12
        nframes = self.m.boot.bootinfo.nframes + abi.DEV_PAGES
        if pfn >= nframes:
            return {"pfn": pfn, "type": "none"}
        e = self.m.mem.read_u64(abi.FRAMES_PHYS + pfn * 8)
        t = (e >> abi.FT_TYPE_SHIFT) & 0xFF
        return {"pfn": pfn, "type": FT_NAMES.get(t, str(t)), "count": e & abi.FT_COUNT_MASK}

    # ------------------------------------------------------------ page tables
    def pt(self, root=None, lo: int = 0, hi: int = 1 << 48, kernel: bool = False) -> dict:
        """The page-table tree of an address space.  Tables are regions (PDPT 512 GiB, PD
        1 GiB, PT 2 MiB); leaves fold into runs (contiguous va and pa, identical flags incl.
        A/D); handle slots and the entry-point word are shown; a table also reachable from
        another address space is marked `shared`; the self-map is not descended."""
        cr3 = self._cr3(root)
        t0 = time.perf_counter()
        shared = self._table_owners()
        view = self.mem
        unpack = struct.Struct("<512Q").unpack_from
        nleaves = [0]

        def table(pa, level, base):
            ents = unpack(view, pa)
            span = 1 << pagetable.SHIFT[level]
            children = []
            run = None
            for i, e in enumerate(ents):
                va = base + i * span
                if va + span <= lo or va >= hi:
                    continue
                if not e & abi.PTE_P:
                    if e:
                        children.append({"index": i, "va": pagetable.canonical(va), "entry": e,
                                         "kind": "slot" if e & abi.PTE_SLOT else "not-present",
                                         "root": e & abi.PTE_ADDR if e & abi.PTE_SLOT else None,
                                         "flags": flag_names(e)})
                    run = None
                    continue
                leaf = level == 1 or e & abi.PTE_PS
                if leaf:
                    nleaves[0] += 1
                    pa_leaf = pagetable.leaf_addr(e, span)
                    if run is not None and run["_next_va"] == va and run["_next_pa"] == pa_leaf \
                            and run["_flags"] == e & _FOLD_MASK & ~(0x1000 if level > 1 else 0):
                        run["pages"] += 1
                        run["_next_va"] += span
                        run["_next_pa"] += span
                        continue
                    run = {"index": i, "va": pagetable.canonical(va), "pa": pa_leaf, "pages": 1,
                           "page_size": span, "kind": "leaf", "flags": flag_names(e),
                           "_next_va": va + span, "_next_pa": pa_leaf + span,
                           "_flags": e & _FOLD_MASK & ~(0x1000 if level > 1 else 0)}
                    children.append(run)
                    continue
                run = None
                sub = e & abi.PTE_ADDR
                node = {"index": i, "va": pagetable.canonical(va), "kind": "table",
                        "level": LEVEL[level - 1], "table": sub, "flags": flag_names(e),
                        "region": span}
                owners = shared.get(sub, ())
                others = sorted(o for o in owners if o != cr3)
                if others:
                    node["shared_with"] = others
                if level == 4 and i == abi.PML4_SELF:
                    node["kind"] = "self-map"
                elif level == 4 and i in (abi.PML4_KERNEL, abi.PML4_USERWIN) and not kernel:
                    node["kind"] = "kernel"
                elif not self.m.mem.contains(sub, abi.PAGE):
                    node["error"] = "outside RAM"
                else:
                    node["children"] = table(sub, level - 1, va)
                children.append(node)
            for c in children:
                for k in ("_next_va", "_next_pa", "_flags"):
                    c.pop(k, None)
            return children

        tree = table(cr3, 4, 0)
        info = self.m.mem.read_u64(cr3 + abi.PML4_INFO * 8)
        return {"cr3": cr3, "entry": info >> 1, "frame": self.frame(cr3), "tree": tree,
                "leaves": nleaves[0], "ms": (time.perf_counter() - t0) * 1000}

    def _roots(self) -> list[int]:
        out = []
        seen = set()
        stack = [self.m.boot.bootinfo.root_phys]
        while stack:
            r = stack.pop()
            if r in seen or not self.m.mem.contains(r, abi.PAGE):
                continue
            seen.add(r)
            out.append(r)
            for c in self._children(r):
                stack.append(c[1])
        return out

    def _children(self, root: int) -> list[tuple[int, int]]:
        ents = struct.unpack_from("<512Q", self.mem, root)
        out = []
        for h in range(2, abi.MAX_HANDLES):
            e = ents[abi.PML4_HANDLE0 + h]
            if e & abi.PTE_SLOT and not e & abi.PTE_P:
                out.append((h, e & abi.PTE_ADDR))
        return out

    def _table_owners(self) -> dict[int, set[int]]:
        """Table page -> the roots that reach it (user half and kernel half, not the self-map)."""
        owners: dict[int, set[int]] = {}
        unpack = struct.Struct("<512Q").unpack_from
        for r in self._roots():
            stack = [(r, 4)]
            while stack:
                t, lv = stack.pop()
                ents = unpack(self.mem, t)
                for i, e in enumerate(ents):
                    if not e & abi.PTE_P or (lv > 1 and e & abi.PTE_PS) or lv == 1:
                        continue
                    if lv == 4 and i == abi.PML4_SELF:
                        continue
                    sub = e & abi.PTE_ADDR
                    s = owners.setdefault(sub, set())
                    if r in s:
                        continue
                    s.add(r)
                    if lv > 2 and self.m.mem.contains(sub, abi.PAGE) and len(s) == 1:
                        stack.append((sub, lv - 1))
        # a subtree shared at the top is shared below too
        return owners

    def as_tree(self) -> dict:
        """The address-space tree read from the page tables (handle slots)."""
        cur = self._cr3(None)
        root = self.m.boot.bootinfo.root_phys

        def node(r, handle, depth=0):
            ents = struct.unpack_from("<512Q", self.mem, r)
            parent = ents[abi.PML4_HANDLE0 + 1]
            d = {"root": r, "handle": handle, "entry": ents[abi.PML4_INFO] >> 1,
                 "parent": parent & abi.PTE_ADDR if parent & abi.PTE_SLOT else None,
                 "held_pages": self.frame(r).get("count", 0), "frame": self.frame(r)["type"],
                 "program": self.program_of(r), "current": r == cur, "children": []}
            if depth < 16:
                for h, c in self._children(r):
                    if self.m.mem.contains(c, abi.PAGE):
                        d["children"].append(node(c, h, depth + 1))
            return d
        return node(root, 0)

    # ------------------------------------------------------------ machine
    def stats(self) -> dict:
        """VM exits by reason, per vCPU and in total, and by device, with rates since the
        previous call (the first call: since the first KVM_RUN)."""
        now = time.perf_counter()
        per = {i: dict(c) for i, c in sorted(getattr(self.m, "vcpu_exits", {}).items())}
        if not per:
            per = {0: dict(self.m.exit_counts)}
        devs = dict(getattr(self.m, "device_exits", {}))
        snap = {"vcpus": per, "devices": devs}
        if self._last_stats is not None:
            t, prev = self._last_stats
        else:
            t, prev = (self.m.t_first_run or now), {"vcpus": {}, "devices": {}}
        dt = max(now - t, 1e-9)

        def rate(cur, old):
            return {k: (v - old.get(k, 0)) / dt for k, v in cur.items()}
        self._last_stats = (now, snap)
        vcpus = [{"vcpu": i, "exits": c, "total": sum(c.values()),
                  "rates": rate(c, prev["vcpus"].get(i, {}))} for i, c in per.items()]
        return {"vcpus": vcpus, "exits": dict(self.m.exit_counts),
                "devices": devs, "device_rates": rate(devs, prev["devices"]),
                "interval_s": dt,
                "run_s": (now - self.m.t_first_run) if self.m.t_first_run else 0.0,
                "console": dict(getattr(self.m.console, "stats", {})),
                "boot_to_prompt_ms": self.m.stats.get("boot_to_prompt_ms")}

    def devices(self) -> dict:
        bi = self.m.boot.bootinfo
        out = []
        con = self.m.console
        rings = {}
        for name, pfn in (("out", bi.console_out_pfn), ("in", bi.console_in_pfn)):
            pa = pfn * abi.PAGE
            head = self.m.mem.read_u32(pa + abi.RING_HEAD)
            tail = self.m.mem.read_u32(pa + abi.RING_TAIL)
            rings[name] = {"phys": pa, "head": head, "tail": tail,
                           "used": (tail - head) & 0xFFFFFFFF, "size": abi.RING_SIZE,
                           "waiting": self.m.mem.read_u32(pa + abi.RING_WAITING)}
        out.append({"name": "console", "page": abi.DEV_CONSOLE_DOORBELL,
                    "gpa": self.m.device_page_gpa(abi.DEV_CONSOLE_DOORBELL), "rings": rings,
                    "doorbell": "ioeventfd" if self.m._eventfds else "MMIO exit",
                    "stats": dict(getattr(con, "stats", {}))})
        out.append({"name": "platform", "page": abi.DEV_PLATFORM,
                    "gpa": self.m.device_page_gpa(abi.DEV_PLATFORM),
                    "registers": {"EXIT": abi.PLAT_EXIT, "BOOT_TIMER": abi.PLAT_BOOT_TIMER}})
        known = {abi.DEV_CONSOLE_DOORBELL, abi.DEV_PLATFORM}
        for idx, d in sorted(self.m._mmio.items()):
            if idx not in known:
                out.append({"name": d.name, "page": idx, "gpa": self.m.device_page_gpa(idx)})
        return {"devices": out, "device_area": self.m.ram_bytes, "pages": abi.DEV_PAGES,
                "exits": dict(getattr(self.m, "device_exits", {}))}

    def iommu(self) -> dict:
        io = getattr(self.m, "iommu", None)         # devices/iommu.py (with a --disk)
        if io is not None and hasattr(io, "inspect"):
            return io.inspect()
        for d in getattr(self.m, "devices", []):
            if "iommu" in getattr(d, "name", "") and hasattr(d, "inspect"):
                return d.inspect()
        return {"iommu": None, "message": "no IOMMU yet"}

    # ------------------------------------------------------------ run control
    def status(self) -> dict:
        ev = self.dbg.last_stop
        return {"paused": self.m.paused, "stopping": self.m.stopping,
                "last_stop": ev.as_dict() if ev else None,
                "facilities": self.dbg.facilities()}

    def _wrap(self, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except DebugError as e:
            raise InspectError(str(e)) from None

    def break_(self, where, phys: bool = False, kind: str = "break") -> dict:
        addr = self.resolve(where) if not phys else parse_int(where)
        with self.paused():
            bp = self._wrap(self.dbg.add_breakpoint, addr, phys=phys, kind=kind)
        return bp.as_dict(self.symbols)

    def hbreak(self, where, phys: bool = False) -> dict:
        return self.break_(where, phys, kind="hbreak")

    def delete(self, what) -> dict:
        with self.paused():
            ids = self._wrap(self.dbg.delete, what)
        return {"deleted": ids}

    def breakpoints(self) -> list[dict]:
        return [b.as_dict(self.symbols) for b in self.dbg.list()]

    def stop(self) -> dict:
        ev = self._wrap(self.dbg.stop)
        return {"stopped": True, "rip": self.dbg.vcpu().get_regs().rip, "reason": ev.reason}

    def _run_and_wait(self, fn, wait: float | None):
        seq = self.dbg.stop_seq
        self._wrap(fn)
        if wait is None:
            return {"running": True}
        ev = self.dbg.wait_stop(wait, after=seq)
        if ev is None:
            return {"running": True, "note": f"no stop within {wait} s"}
        d = ev.as_dict()
        d["symbol"] = self.symbol(ev.rip) if ev.reason != "exited" else None
        return d

    def cont(self, wait: float | None = None) -> dict:
        return self._run_and_wait(self.dbg.cont, wait)

    def step(self, n: int = 1, wait: float = 10.0) -> dict:
        if not self.m.paused:
            raise InspectError("the machine is running: `stop` it first")
        return self._run_and_wait(lambda: self.dbg.step(n), wait)

    def next(self, wait: float = 10.0) -> dict:
        if not self.m.paused:
            raise InspectError("the machine is running: `stop` it first")
        return self._run_and_wait(self.dbg.next, wait)

    def trace(self, what: str = "syscalls", on: bool | None = None) -> dict:
        if what != "syscalls":
            raise InspectError(f"unknown trace {what!r} (only: syscalls)")
        if on is not None:
            with self.paused():
                self.systrace.on() if on else self.systrace.off()
        return {"trace": "syscalls", "enabled": self.systrace.enabled,
                "records": len(self.systrace.records)}
