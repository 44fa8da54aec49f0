"""Register and crash dumps.

Everything here is pure formatting over a CpuSnapshot plus guest memory, so it
is testable without KVM.  Dumps go to stderr (the caller's choice of stream) and
are returned as text.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from vmm import abi
from vmm.memory import read_virt, walk, format_walk

GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]

VECTORS = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD error", 20: "#VE virtualization", 21: "#CP control protection",
}
# Vectors that push an error code.
ERROR_CODE_VECTORS = {8, 10, 11, 12, 13, 14, 17, 21}

RFLAGS_BITS = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
               (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"),
               (19, "VIF"), (20, "VIP"), (21, "ID")]
CR0_BITS = [(0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"),
            (18, "AM"), (29, "NW"), (30, "CD"), (31, "PG")]
CR4_BITS = [(0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"),
            (7, "PGE"), (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"),
            (13, "VMXE"), (16, "FSGSBASE"), (17, "PCIDE"), (18, "OSXSAVE"), (20, "SMEP"),
            (21, "SMAP"), (22, "PKE")]
EFER_BITS = [(0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE")]


def vector_name(v: int) -> str:
    if v in VECTORS:
        return VECTORS[v]
    return "reserved" if v < 32 else f"interrupt {v:#x}"


def _bits(value: int, table) -> str:
    return " ".join(name for bit, name in table if value >> bit & 1)


def decode_rflags(v: int) -> str:
    s = _bits(v, RFLAGS_BITS)
    iopl = (v >> 12) & 3
    if iopl:
        s += f" IOPL={iopl}"
    return s.strip()


def decode_pf_error(err: int) -> str:
    parts = ["protection" if err & 1 else "not-present",
             "write" if err & 2 else "read",
             "user" if err & 4 else "supervisor"]
    if err & 8:
        parts.append("reserved-bit")
    if err & 16:
        parts.append("instruction-fetch")
    return ", ".join(parts)


class Symbols:
    """Nearest-symbol lookup: address -> 'name+0x12'."""

    def __init__(self, symbols: dict[str, int] | None = None, max_offset: int = 0x10_0000):
        self._raw = symbols or {}
        self._sorted = None             # sorted on first lookup: not on every VM's start
        self.max_offset = max_offset

    def _sort(self):
        if self._sorted is None:
            items = sorted(((a, n) for n, a in self._raw.items()), key=lambda t: (t[0], t[1]))
            self._sorted = ([a for a, _ in items], [n for _, n in items])
        return self._sorted

    _addrs = property(lambda self: self._sort()[0])
    _names = property(lambda self: self._sort()[1])

    def __bool__(self):
        return bool(self._raw)

    def lookup(self, addr: int) -> str | None:
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        off = addr - self._addrs[i]
        if off > self.max_offset:
            return None
        return self._names[i] if off == 0 else f"{self._names[i]}+{off:#x}"

    def describe(self, addr: int) -> str:
        s = self.lookup(addr)
        return f"{addr:#018x} <{s}>" if s else f"{addr:#018x}"


@dataclass
class Segment:
    selector: int = 0
    base: int = 0
    limit: int = 0
    type: int = 0
    dpl: int = 0
    l: int = 0
    present: int = 0

    def __str__(self):
        return (f"{self.selector:#06x} (base {self.base:#x} limit {self.limit:#x} type {self.type:#x} "
                f"dpl {self.dpl}{' L' if self.l else ''}{'' if self.present else ' NP'})")


@dataclass
class CpuSnapshot:
    """Registers of one vCPU, decoupled from KVM structs."""
    regs: dict[str, int] = field(default_factory=dict)     # GPRS + rip + rflags
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    cs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    gdt: tuple[int, int] = (0, 0)
    idt: tuple[int, int] = (0, 0)

    @property
    def rip(self) -> int:
        return self.regs.get("rip", 0)

    @property
    def rsp(self) -> int:
        return self.regs.get("rsp", 0)

    @property
    def cpl(self) -> int:
        return self.cs.selector & 3 if self.cr0 & 1 else 0

    @property
    def paging(self) -> bool:
        return bool(self.cr0 >> 31 & 1)

    @classmethod
    def from_kvm(cls, regs, sregs) -> "CpuSnapshot":
        def seg(s):
            return Segment(s.selector, s.base, s.limit, s.type, s.dpl, s.l, s.present)
        r = {n: getattr(regs, n) for n in GPRS + ["rip", "rflags"]}
        return cls(r, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer,
                   seg(sregs.cs), seg(sregs.ss), seg(sregs.tr),
                   (sregs.gdt.base, sregs.gdt.limit), (sregs.idt.base, sregs.idt.limit))


def read_guest_virt(mem, snap: CpuSnapshot, va: int, n: int) -> bytes | None:
    """Read guest memory at va as the vCPU sees it (paging or not)."""
    if mem is None:
        return None
    if snap.paging:
        return read_virt(mem, snap.cr3, va, n)
    try:
        return bytes(mem.read(va, n))
    except Exception:
        return None


_cs_cache = {}


def disassemble(code: bytes, addr: int, count: int = 5, symbols: Symbols | None = None,
                mark: int | None = None) -> list[str]:
    """Disassemble up to count instructions of 64-bit code at addr."""
    import capstone
    md = _cs_cache.get("64")
    if md is None:
        md = _cs_cache["64"] = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for insn in md.disasm(code, addr):
        if out and insn.bytes == b"\0\0":      # zero padding after the code: stop
            break
        sym = symbols.lookup(insn.address) if symbols else None
        arrow = "=>" if insn.address == mark else "  "
        tag = f" <{sym}>" if sym else ""
        out.append(f"{arrow} {insn.address:#018x}{tag}:  {insn.bytes.hex(' '):<30} "
                   f"{insn.mnemonic} {insn.op_str}".rstrip())
        if len(out) >= count:
            break
    if not out:
        out.append(f"   {addr:#018x}:  (cannot decode: {code[:16].hex(' ')})")
    return out


def code_at(mem, snap: CpuSnapshot, rip: int, symbols: Symbols | None, count: int = 5) -> list[str]:
    code = read_guest_virt(mem, snap, rip, 15 * count)
    if code is None:
        # The tail of the range may be unmapped: try what fits in rip's page.
        code = read_guest_virt(mem, snap, rip, abi.PAGE - (rip & 0xFFF))
    if code is None:
        return [f"   {rip:#018x}: (code not mapped under cr3 {snap.cr3:#x})"]
    return disassemble(code, rip, count, symbols, mark=rip)


def format_registers(snap: CpuSnapshot, symbols: Symbols | None = None) -> list[str]:
    symbols = symbols or Symbols()
    r = snap.regs
    lines = [f"RIP {symbols.describe(snap.rip)}   CPL {snap.cpl}",
             f"RFLAGS {r.get('rflags', 0):#010x} [{decode_rflags(r.get('rflags', 0))}]"]
    for i in range(0, 16, 4):
        lines.append("  ".join(f"{n.upper():>3} {r.get(n, 0):#018x}" for n in GPRS[i:i + 4]))
    lines.append(f"CR0 {snap.cr0:#010x} [{_bits(snap.cr0, CR0_BITS)}]   CR2 {snap.cr2:#018x}")
    lines.append(f"CR3 {snap.cr3:#018x}   CR4 {snap.cr4:#x} [{_bits(snap.cr4, CR4_BITS)}]")
    lines.append(f"EFER {snap.efer:#x} [{_bits(snap.efer, EFER_BITS)}]")
    lines.append(f"CS {snap.cs}")
    lines.append(f"SS {snap.ss}")
    lines.append(f"GDT {snap.gdt[0]:#x}/{snap.gdt[1]:#x}  IDT {snap.idt[0]:#x}/{snap.idt[1]:#x}  "
                 f"TR {snap.tr.selector:#x}")
    return lines


def dump_state(title: str, snap: CpuSnapshot, mem=None, symbols: Symbols | dict | None = None,
               extra: list[str] | None = None) -> str:
    """A full register dump with the code at RIP."""
    if isinstance(symbols, dict) or symbols is None:
        symbols = Symbols(symbols)
    lines = [f"=== xomb-vmm: {title} ==="]
    lines += extra or []
    lines += format_registers(snap, symbols)
    lines.append("code:")
    lines += code_at(mem, snap, snap.rip, symbols)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Kernel panic (out PANIC_PORT, al = vector): the exception frame at RSP.
#   [rsp+0]  vector   [rsp+8]  error code
#   [rsp+16] rip  [rsp+24] cs  [rsp+32] rflags  [rsp+40] rsp  [rsp+48] ss
# (vector and error code pushed by the kernel's stub, the rest by the CPU)
# --------------------------------------------------------------------------
PANIC_FRAME_FIELDS = ["vector", "error", "rip", "cs", "rflags", "rsp", "ss"]


@dataclass
class PanicFrame:
    vector: int
    error: int
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    at: int             # virtual address of the frame on the kernel stack


def _plausible(f: PanicFrame, vector: int) -> bool:
    return (f.vector == vector and f.cs in (abi.GDT_KCS, abi.GDT_UCS | 3, abi.GDT_UCS,
                                            abi.GDT_UCS32 | 3)
            and f.rflags & 2 and f.rflags < (1 << 22) and f.error < (1 << 32))


def decode_panic_frame(mem, snap: CpuSnapshot, vector: int, search: int = 32) -> PanicFrame | None:
    """Find the exception frame on the kernel stack: at RSP, else the nearest plausible one above."""
    raw = read_guest_virt(mem, snap, snap.rsp, 8 * (search + 7))
    if raw is None:
        raw = read_guest_virt(mem, snap, snap.rsp, 8 * 7)
        if raw is None:
            return None
    words = struct.unpack_from(f"<{len(raw) // 8}Q", raw)
    for i in range(0, len(words) - 6):
        f = PanicFrame(*words[i:i + 7], at=snap.rsp + 8 * i)
        if _plausible(f, vector):
            return f
    return None


def panic_dump(snap: CpuSnapshot, vector: int, mem=None, symbols: Symbols | dict | None = None) -> str:
    if isinstance(symbols, dict) or symbols is None:
        symbols = Symbols(symbols)
    lines = [f"=== xomb-vmm: kernel panic: vector {vector} ({vector_name(vector)}) ==="]
    f = decode_panic_frame(mem, snap, vector)
    if f is None:
        lines.append(f"(no exception frame found on the kernel stack at {snap.rsp:#x})")
    else:
        ring = f.cs & 3
        lines.append(f"exception frame at {f.at:#x}:")
        err = f"error {f.error:#x}"
        if vector == 14:
            err += f" [{decode_pf_error(f.error)}]  CR2 {snap.cr2:#018x}"
            s = symbols.lookup(snap.cr2)
            if s:
                err += f" <{s}>"
        elif vector not in ERROR_CODE_VECTORS:
            err += " (none)"
        lines.append(f"  {err}")
        lines.append(f"  RIP {symbols.describe(f.rip)}  CS {f.cs:#x} (ring {ring})")
        lines.append(f"  RFLAGS {f.rflags:#x} [{decode_rflags(f.rflags)}]  RSP {f.rsp:#018x}  SS {f.ss:#x}")
        lines.append("faulting code:")
        lines += code_at(mem, snap, f.rip, symbols)
        if vector == 14 and mem is not None and snap.paging:
            lines.append(format_walk(walk(mem, snap.cr3, snap.cr2)))
    raw = read_guest_virt(mem, snap, snap.rsp, 64)
    if raw:
        words = struct.unpack("<8Q", raw)
        lines.append(f"stack at {snap.rsp:#x}: " + " ".join(f"{w:#x}" for w in words))
    lines.append("--- panic handler state ---")
    lines += format_registers(snap, symbols)
    return "\n".join(lines) + "\n"
