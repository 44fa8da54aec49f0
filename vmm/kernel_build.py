"""Assemble the kernel (kernel_asm/*.s) with keystone into one flat image.

Image layout (loaded at abi.KERNEL_PHYS):
    +0x0000  multiboot header and the 32-bit stub (boot32.s, 32-bit mode)
    +0x1000  the 64-bit kernel code, assembled at its virtual address KBASE + phys
    +KDATA   the kernel's data, laid out here (not by the assembler): GDT, IDT,
             TSSes, per-CPU blocks.  Their addresses reach the assembly as
             constants (GDT_DESC, PERCPU0, ...).

keystone 0.9.2 has no symbol-table output, so the build appends `.quad label`
for every label it finds in the sources and reads the addresses back from the
tail of the output (then drops the tail).  keystone quirks the sources obey:
never add two symbols in one operand (abi.py precomputes sums), `movabs` only
with rax for absolute 64-bit loads, no numeric local labels.  Undefined symbols
are an error here.  keystone's reading of decimal numbers is unreliable (after a
.macro, or with a symbol resolver set, "47" becomes 0x47), so macros are
expanded here and the kernel sources write every number above 9 in hex
(tests/test_kernel_asm.py checks both).  keystone's `.align` and
`.space` are unreliable in large inputs, hence the data area is built here; and
`mov r64, [abs]` (r64 != rax) is mis-encoded, so data is reached by `movabs rax`,
`lgdt`/`lidt`/`fxrstor [abs]` or a register base (tests/test_kernel_asm.py checks
every memory operand's target).

Descriptor tables hold addresses split into bit fields, so the IDT, the TSS
descriptors, the TSSes and the per-CPU words are filled in here, after
assembly, from the symbol table.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

# keystone itself (~11 ms to import) is loaded only when the kernel is assembled:
# an up-to-date kernel costs nothing at boot.  Its mode constants, fixed by its API:
KS_MODE_32, KS_MODE_64 = 1 << 2, 1 << 3

from . import abi, paths

SOURCES_64 = ["x86.s", "pagetable.s", "entry.s", "upcall.s", "syscall.s", "smp.s", "start.s",
              "selftest.s"]
VERSION_FILE = "VERSION"                # one line: the version string in KINFO
SOURCE_32 = "boot32.s"
STUB_SIZE = 0x1000
KERNEL_VIRT64 = abi.KBASE + abi.KERNEL_PHYS + STUB_SIZE
VECTORS_WITH_DPL3 = {3}                 # int3: the PVM syscall gate and breakpoints
INTERRUPT_HANDLERS = {abi.TIMER_VECTOR: "vec_timer", abi.FLUSH_VECTOR: "vec_flush",
                      **{abi.DEV_VECTOR + i: f"vec_dev{i}" for i in range(abi.DEV_PAGES)}}

# The data area (image offsets; every block aligned as the hardware wants).
KDATA = 0x10000
KDATA_LAYOUT = {            # name -> offset from KDATA
    "gdt": 0x0,             # GDT_ENTRIES * 8 bytes
    "gdt_desc": 0x100,      # lgdt operand: limit, base
    "idt_desc": 0x110,
    "k_root_phys": 0x120,   # init's root, set once at boot: where freed frames go home
    "k_lock": 0x128,        # the big kernel lock (smp.s)
    "k_ncpus": 0x130,       # CPUs in the machine, copied at boot (the boot-info page is init's)
    "kinfo": 0x140,         # KINFO_SIZE bytes: the kernel's identity (magic, build, version)
    "fpu_clean": 0x200,     # a clean FXSAVE image (16-byte aligned)
    "idt": 0x1000,
    "tss0": 0x2000,         # MAX_CPUS TSSes of TSS_STRIDE bytes, each with its I/O bitmap
    "percpu0": 0x4000,      # MAX_CPUS blocks of KSTACK_SIZE (aligned to it)
}
KERNEL_END = KDATA + KDATA_LAYOUT["percpu0"] + abi.MAX_CPUS * abi.KSTACK_SIZE
GDT_FIXED = [0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF,   # null, -, 0x10 KCS, 0x18 KDS
             0x00CFFA000000FFFF, 0x00CFF2000000FFFF,         # 0x23 user CS32, 0x2b user DS
             0x00AFFA000000FFFF, 0]                          # 0x33 user CS64, -

_LABEL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:")
VECTORS_WITH_ERROR = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}


class KernelBuildError(Exception):
    """The kernel sources do not assemble, or the image is malformed."""


@dataclass
class KernelImage:
    image: bytes
    symbols: dict[str, int]
    entry64: int
    mb_entry: int
    stack_tops: list[int]
    gdt: int
    gdt_limit: int
    idt: int
    idt_limit: int
    tss: list[int]
    tss_limit: int
    digest: str = ""
    version: str = ""
    # The conventions this kernel was assembled against (every .equ of abi.inc and the
    # data layout): a rebootless upgrade needs the new kernel to keep the old one's.
    layout: dict = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    def offset(self, va: int) -> int:
        """Image offset of a 64-bit kernel virtual address."""
        return va - abi.KBASE - abi.KERNEL_PHYS


def _labels(text: str) -> list[str]:
    out, in_macro = [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(".macro"):
            in_macro = True
        elif s.startswith(".endm"):
            in_macro = False
        elif not in_macro:
            m = _LABEL.match(line)
            if m:
                out.append(m.group(1))
    return out


_MACRO_DEF = re.compile(r"^[ \t]*\.macro[ \t]+(\w+)[ \t]*([^\n]*?)[ \t]*\n(.*?)^[ \t]*\.endm[ \t]*$",
                        re.M | re.S)


def expand_macros(text: str) -> str:
    """Expand `.macro NAME a, b ... .endm` here, not in keystone: once keystone
    has seen a .macro it reads every later decimal number as hex."""
    macros = {}

    def define(m):
        params = [p.strip() for p in m.group(2).split(",") if p.strip()]
        macros[m.group(1)] = (params, m.group(3))
        return ""
    text = _MACRO_DEF.sub(define, text)
    out = []
    for line in text.splitlines():
        words = line.split(None, 1)
        if words and words[0] in macros:
            params, body = macros[words[0]]
            args = [a.strip() for a in words[1].split(",")] if len(words) > 1 else []
            if len(args) != len(params):
                raise KernelBuildError(f"macro {words[0]} takes {len(params)} arguments: {line.strip()}")
            for p, a in sorted(zip(params, args), key=lambda pa: -len(pa[0])):
                body = body.replace("\\" + p, a)
            out.append(body.rstrip("\n"))
        else:
            out.append(line)
    return "\n".join(out)


def _strip_comments(text: str) -> str:
    # keystone accepts /* */ but a C comment spanning lines is easier to drop here.
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_NOT_SYMBOLS = {"byte", "word", "dword", "qword", "ptr", "rip", "offset"}


def _undefined(text: str) -> list[str]:
    """Names used in operands but never defined (for the error message only)."""
    defined = set(_labels(text)) | set(re.findall(r"\.equ\s+(\w+)", text))
    used = set()
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and not parts[0].startswith(".") and not parts[0].endswith(":"):
            used |= set(_WORD.findall(parts[1]))
    regs = re.compile(r"^([re]?[abcd]x|[abcd][lh]|[re]?(si|di|sp|bp)|(si|di|sp|bp)l|"
                      r"r\d+[bwd]?|[c-gs]s|cr\d|dr\d|xmm\d+)$")
    return sorted(n for n in used - defined - _NOT_SYMBOLS if not regs.match(n))


def _assemble(text: str, addr: int, mode: int, what: str) -> bytes:
    # No sym_resolver: setting one makes keystone 0.9.2 read decimals as hex.
    import keystone
    ks = keystone.Ks(keystone.KS_ARCH_X86, mode)
    try:
        enc, _ = ks.asm(text, addr)
    except keystone.KsError as e:
        missing = _undefined(text) if "SYMBOL_MISSING" in str(e) or "symbol" in str(e) else []
        where = f" (undefined: {', '.join(missing)})" if missing else ""
        raise KernelBuildError(f"{what}: keystone: {e}{where}") from None
    if not enc:
        raise KernelBuildError(f"{what}: assembled to nothing")
    return bytes(enc)


def _assemble_with_symbols(text: str, labels: list[str], addr: int, mode: int,
                           what: str) -> tuple[bytes, dict[str, int]]:
    """Assemble, appending the label table as .quad/.long values read back."""
    width, fmt, d = (8, "Q", ".quad") if mode == KS_MODE_64 else (4, "I", ".long")
    raw = _assemble(text + "\n__symtab:\n" + "\n".join(f"{d} {n}" for n in labels) + "\n",
                    addr, mode, what)
    vals = struct.unpack_from(f"<{len(labels)}{fmt}", raw, len(raw) - width * len(labels))
    return raw[:len(raw) - width * len(labels)], dict(zip(labels, vals))


def _syscall_table() -> str:
    """Generated from abi.SYSCALLS, so numbers and table can never disagree."""
    names = sorted(abi.SYSCALLS, key=abi.SYSCALLS.get)
    return "syscall_table:\n" + "".join(f"    .quad sys_{n.lower()}\n" for n in names) + \
        "kernel_code_end:\n"


def _vector_stubs() -> str:
    """vec0..vec31 but vec3 (entry.s): [rsp] = vector, [rsp+8] = error code."""
    out = []
    for v in range(32):
        if v == 3:
            continue
        push_err = "" if v in VECTORS_WITH_ERROR else "    push 0\n"
        out.append(f"vec{v}:\n{push_err}    push 0x{v:x}\n    jmp exc_common\n")
    for i in range(abi.DEV_PAGES):              # device interrupts: [rsp] = device page
        out.append(f"vec_dev{i}:\n    push 0x{i:x}\n    jmp dev_common\n")
    return "".join(out)


def _data_symbols() -> dict[str, int]:
    base = abi.KBASE + abi.KERNEL_PHYS + KDATA
    sym = {n: base + o for n, o in KDATA_LAYOUT.items()}
    sym["percpu0_top"] = sym["percpu0"] + abi.KSTACK_SIZE
    sym["tss0_iomap"] = sym["tss0"] + 102
    sym["kernel_end"] = abi.KBASE + abi.KERNEL_PHYS + KERNEL_END
    return sym


def _data_equs(sym: dict[str, int]) -> str:
    return "".join(f".equ {n.upper()}, 0x{sym[n]:x}\n" for n in
                   ["gdt_desc", "idt_desc", "k_root_phys", "k_lock", "k_ncpus", "kinfo", "fpu_clean",
                    "tss0_iomap",
                    "percpu0", "percpu0_top"])


def _idt_entry(handler: int, dpl: int) -> bytes:
    return struct.pack("<HHBBHII", handler & 0xFFFF, abi.GDT_KCS, 0,
                       0x8E | (dpl << 5), (handler >> 16) & 0xFFFF, handler >> 32, 0)


def _tss_descriptor(base: int, limit: int) -> bytes:
    return struct.pack("<HHBBBBII", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF,
                       0x89, (limit >> 16) & 0xF, (base >> 24) & 0xFF, base >> 32, 0)


def _iomap() -> bytes:
    """Ports ring 3 may use when the bitmap is enabled (QEMU platform only)."""
    bits = bytearray(b"\xff" * abi.TSS_IOMAP_BYTES)
    for port in [*range(abi.COM1, abi.COM1 + 8), abi.PANIC_PORT, abi.PANIC_PORT + 1]:
        bits[port // 8] &= ~(1 << (port % 8)) & 0xFF
    return bytes(bits) + b"\xff"


def _patch(img: bytearray, k: KernelImage) -> None:
    sym = k.symbols
    off = k.offset
    struct.pack_into(f"<{len(GDT_FIXED)}Q", img, off(k.gdt), *GDT_FIXED)
    struct.pack_into("<HQ", img, off(sym["gdt_desc"]), abi.GDT_LIMIT, k.gdt)
    struct.pack_into("<HQ", img, off(sym["idt_desc"]), 4095, k.idt)
    struct.pack_into("<H", img, off(sym["fpu_clean"]), 0x37F)          # FCW
    struct.pack_into(f"<QQ{abi.KINFO_VERSION_MAX}s", img, off(sym["kinfo"]), abi.KINFO_MAGIC,
                     int(k.digest[:16] or "0", 16), k.version.encode())
    struct.pack_into("<I", img, off(sym["fpu_clean"]) + 24, 0x1F80)    # MXCSR
    for v in range(256):
        h = sym[f"vec{v}"] if v < 32 else sym.get(INTERRUPT_HANDLERS.get(v, ""), sym["vec_spurious"])
        dpl = 3 if v in VECTORS_WITH_DPL3 else 0
        img[off(k.idt) + 16 * v: off(k.idt) + 16 * v + 16] = _idt_entry(h, dpl)
    for cpu in range(abi.MAX_CPUS):
        tss, top = k.tss[cpu], k.stack_tops[cpu]
        d = off(sym["gdt"]) + abi.GDT_TSS0 + 16 * cpu
        img[d:d + 16] = _tss_descriptor(tss, abi.TSS_LIMIT)
        struct.pack_into("<Q", img, off(tss) + 4, top)                 # rsp0
        struct.pack_into("<H", img, off(tss) + 102, 0xFFFF)            # no I/O bitmap
        io = _iomap()
        img[off(tss) + abi.TSS_IOMAP: off(tss) + abi.TSS_IOMAP + len(io)] = io
        pc = top - abi.KSTACK_SIZE
        struct.pack_into("<Q", img, off(pc) + abi.PC_SELF, pc)
        struct.pack_into("<Q", img, off(pc) + abi.PC_KTOP, top)
        struct.pack_into("<Q", img, off(pc) + abi.PC_CPU, cpu)


def read_version(src_dir: Path) -> str:
    """The kernel's version string: the first line of kernel_asm/VERSION."""
    f = Path(src_dir) / VERSION_FILE
    if not f.exists():
        return "xomb (unversioned)"
    text = f.read_text(errors="replace").strip().splitlines()
    v = text[0].strip() if text else ""
    if not v or len(v.encode()) >= abi.KINFO_VERSION_MAX or not v.isprintable() or not v.isascii():
        raise KernelBuildError(f"{f}: the version must be one line of printable ASCII, "
                               f"1..{abi.KINFO_VERSION_MAX - 1} characters (got {v!r})")
    return v


def layout_of(abi_inc: str) -> dict[str, int]:
    """The conventions a kernel is built against: every constant of its abi.inc, and
    the data area's layout (vmm/upgrade.py compares two kernels' with this)."""
    out = {m.group(1): int(m.group(2), 0) for m in
           re.finditer(r"^\.equ\s+(\w+),\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*$", abi_inc, re.M)}
    out.update({f"KDATA.{n}": o for n, o in KDATA_LAYOUT.items()})
    out.update(KDATA=KDATA, KERNEL_END=KERNEL_END, STUB_SIZE=STUB_SIZE)
    return out


def assemble(src_dir: Path, abi_inc: str) -> KernelImage:
    """Assemble both parts and return the patched image (no caching)."""
    src_dir = Path(src_dir)
    version = read_version(src_dir)
    data = _data_symbols()
    text64 = _strip_comments(abi_inc) + _data_equs(data) + expand_macros("\n".join(
        _strip_comments((src_dir / f).read_text()) for f in SOURCES_64))
    text64 += "\n" + _vector_stubs() + _syscall_table()
    labels = _labels(text64)
    dup = {n for n in labels if labels.count(n) > 1}
    if dup:
        raise KernelBuildError(f"duplicate labels: {', '.join(sorted(dup))}")
    code64, symbols = _assemble_with_symbols(text64, labels, KERNEL_VIRT64, KS_MODE_64,
                                             "kernel (64-bit)")
    if KERNEL_VIRT64 + len(code64) > data["gdt"]:
        raise KernelBuildError(f"kernel code ({len(code64)} bytes) overlaps its data area")
    symbols.update(data)

    gdt_phys = symbols["gdt"] - abi.KBASE
    qe = symbols["kernel_qemu_entry"]
    keep = ["KERNEL_PHYS", "BOOTINFO_PHYS", "KT_BOOT_PML4", "GDT_KCS", "GDT_LIMIT",
            "MB_MAGIC", "MB_FLAGS", "MB_CHECKSUM", "MB_BSS_END"]
    inc32 = "".join(f".equ {n}, 0x{getattr(abi, n):x}\n" for n in keep)
    inc32 += (f".equ GDT_PHYS, 0x{gdt_phys:x}\n.equ QEMU_ENTRY_LO, 0x{qe & 0xFFFFFFFF:x}\n"
              f".equ QEMU_ENTRY_HI, 0x{qe >> 32:x}\n")
    text32 = inc32 + _strip_comments((src_dir / SOURCE_32).read_text())
    labels32 = _labels(text32)
    stub, syms32 = _assemble_with_symbols(text32, labels32, abi.KERNEL_PHYS, KS_MODE_32,
                                          "boot stub (32-bit)")
    if len(stub) > STUB_SIZE:
        raise KernelBuildError(f"boot stub is {len(stub)} bytes, more than {STUB_SIZE}")
    symbols.update({f"boot32.{n}": v for n, v in syms32.items()})

    img = bytearray(stub.ljust(STUB_SIZE, b"\0") + code64.ljust(KDATA - STUB_SIZE, b"\0"))
    img += bytes(KERNEL_END - KDATA)
    if len(img) > abi.KERNEL_MAX:
        raise KernelBuildError(f"kernel image is {len(img)} bytes, more than {abi.KERNEL_MAX}")
    percpu0 = symbols["percpu0"]
    tops = [percpu0 + (i + 1) * abi.KSTACK_SIZE for i in range(abi.MAX_CPUS)]
    k = KernelImage(image=b"", symbols=symbols, entry64=symbols["kernel_start64"],
                    mb_entry=symbols["boot32.mb_entry"], stack_tops=tops,
                    gdt=symbols["gdt"], gdt_limit=abi.GDT_LIMIT, idt=symbols["idt"],
                    idt_limit=4095,
                    tss=[symbols["tss0"] + i * abi.TSS_STRIDE for i in range(abi.MAX_CPUS)],
                    tss_limit=abi.TSS_LIMIT, digest=_digest(src_dir, abi_inc), version=version,
                    layout=layout_of(abi_inc))
    _patch(img, k)
    k.image = bytes(img)
    return k


def _digest(src_dir: Path, abi_inc: str) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes() + abi_inc.encode())
    for f in [*SOURCES_64, SOURCE_32]:
        h.update(f.encode() + b"\0" + (src_dir / f).read_bytes())
    v = src_dir / VERSION_FILE
    h.update(v.read_bytes() if v.exists() else b"")
    return h.hexdigest()


def build_kernel(gen_dir: Path, out_dir: Path, src_dir: Path = paths.KERNEL_SRC) -> KernelImage:
    """Build (or load from the cache) build/kernel/kernel.bin and kernel.map."""
    abi_inc = (gen_dir / "abi.inc").read_text()
    digest = _digest(src_dir, abi_inc)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path, bin_path = out_dir / "kernel.json", out_dir / "kernel.bin"
    if meta_path.exists() and bin_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("digest") == digest:
            meta["image"] = bin_path.read_bytes()
            meta.pop("path", None)
            return KernelImage(**meta, path=bin_path)
    k = assemble(src_dir, abi_inc)
    bin_path.write_bytes(k.image)
    (out_dir / "kernel.map").write_text("".join(
        f"{v:016x} {n}\n" for n, v in sorted(k.symbols.items(), key=lambda kv: kv[1])))
    meta = {f: getattr(k, f) for f in k.__dataclass_fields__ if f not in ("image", "path")}
    meta_path.write_text(json.dumps(meta))
    k.path = bin_path
    return k


def load_map(path: Path) -> dict[str, int]:
    """Read a kernel.map written by build_kernel."""
    out = {}
    for line in path.read_text().splitlines():
        addr, name = line.split()
        out[name] = int(addr, 16)
    return out
