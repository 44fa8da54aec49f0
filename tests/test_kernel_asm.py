"""The kernel's bytes, checked with capstone (keystone 0.9.2 has silent mis-encodings)."""
import struct
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_REG_INVALID, X86_REG_RIP

from vmm import abi, kernel_build as kb, paths


@pytest.fixture(scope="module")
def kernel():
    return kb.assemble(paths.KERNEL_SRC, abi.asm_include())


def code_insns(k):
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.detail = True
    code = k.image[kb.STUB_SIZE:k.offset(k.symbols["syscall_table"])]
    return list(cs.disasm(code, kb.KERNEL_VIRT64)), len(code)


def test_every_code_byte_decodes(kernel):
    insns, size = code_insns(kernel)
    assert sum(i.size for i in insns) == size, "undecodable bytes in kernel code"
    assert not [i for i in insns if i.mnemonic in ("(bad)", "ljmp")]


def _target(i, op):
    m = op.mem
    if m.segment != X86_REG_INVALID:        # gs:[PC_*]: per-CPU, not an address
        return None
    if m.base == X86_REG_RIP:
        return i.address + i.size + m.disp
    if m.base == X86_REG_INVALID and m.index == X86_REG_INVALID:
        return m.disp & (2**64 - 1)
    return None


def test_absolute_memory_operands_hit_known_places(kernel):
    """Every rip-relative/absolute operand lands inside the image, the boot info,
    the frame table, the self-map or UPCALL_VA: catches keystone's `mov r64, [abs]`."""
    k = kernel
    lo, hi = abi.KBASE + abi.KERNEL_PHYS, k.symbols["kernel_end"]
    ok_ranges = [(lo, hi), (abi.KBASE + abi.BOOTINFO_PHYS, abi.KBASE + abi.BOOTINFO_PHYS + 4096),
                 (abi.SELF_PT, abi.SELF_PML4 + 4096)]
    insns, _ = code_insns(k)
    bad = []
    for i in insns:
        for op in i.operands:
            if op.type == X86_OP_MEM:
                t = _target(i, op)
                if t is not None and not any(a <= t < b for a, b in ok_ranges):
                    bad.append(f"{i.address:x}: {i.mnemonic} {i.op_str} -> {t:#x}")
    assert not bad, "\n".join(bad)


def test_data_references_resolve_to_their_symbols(kernel):
    k = kernel
    insns, _ = code_insns(k)
    targets = {_target(i, op) for i in insns for op in i.operands if op.type == X86_OP_MEM}
    for name in ["gdt_desc", "idt_desc", "k_root_phys", "k_ncpus", "fpu_clean"]:
        assert k.symbols[name] in targets, name


def test_syscall_table_matches_abi(kernel):
    k = kernel
    off = k.offset(k.symbols["syscall_table"])
    for name, num in abi.SYSCALLS.items():
        (entry,) = struct.unpack_from("<Q", k.image, off + 8 * num)
        assert entry == k.symbols[f"sys_{name.lower()}"], name


def test_idt_points_at_stubs_and_gate_is_dpl3(kernel):
    k = kernel
    for v in range(256):
        lo, sel, ist, attr, mid, hi, _ = struct.unpack_from("<HHBBHII", k.image, k.offset(k.idt) + 16 * v)
        want = f"vec{v}" if v < 32 else kb.INTERRUPT_HANDLERS.get(v, "vec_spurious")
        assert lo | (mid << 16) | (hi << 32) == k.symbols[want]
        assert sel == abi.GDT_KCS and attr & 0x80
        assert (attr >> 5) & 3 == (3 if v == 3 else 0)


def test_gate_check_compares_the_frame_rip_with_the_gate(kernel):
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    at = kernel.symbols["vec3"]
    insns = list(cs.disasm(kernel.image[kernel.offset(at):kernel.offset(at) + 32], at))[:4]
    assert [i.mnemonic for i in insns] == ["cmp", "jne", "cmp", "je"]
    assert insns[0].op_str == f"dword ptr [rsp], {(abi.GATE_VA + 1) & 0xFFFFFFFF:#x}"
    assert insns[2].op_str == f"dword ptr [rsp + 4], {(abi.GATE_VA + 1) >> 32:#x}"
    assert int(insns[3].op_str, 16) == kernel.symbols["syscall_common"]


def test_each_vector_stub_pushes_its_own_number(kernel):
    """keystone once read `push 14` inside a macro as 0x14."""
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    for v in range(32):
        if v == 3:
            continue
        at = kernel.symbols[f"vec{v}"]
        insns = list(cs.disasm(kernel.image[kernel.offset(at):kernel.offset(at) + 16], at))
        pushes = [int(i.op_str, 16) for i in insns[:2] if i.mnemonic == "push"]
        assert pushes == ([v] if v in kb.VECTORS_WITH_ERROR else [0, v]), v


def test_tss_and_percpu(kernel):
    k = kernel
    for cpu in range(abi.MAX_CPUS):
        (rsp0,) = struct.unpack_from("<Q", k.image, k.offset(k.tss[cpu]) + 4)
        assert rsp0 == k.stack_tops[cpu] and rsp0 % abi.KSTACK_SIZE == 0
        pc = rsp0 - abi.KSTACK_SIZE
        self_, top = struct.unpack_from("<QQ", k.image, k.offset(pc))
        assert (self_, top) == (pc, rsp0)


def test_boot_stub_is_32bit_code_with_a_valid_multiboot_header(kernel):
    img = kernel.image
    magic, flags, csum = struct.unpack_from("<III", img, 0)
    assert magic == abi.MB_MAGIC and (magic + flags + csum) & 0xFFFFFFFF == 0
    entry = struct.unpack_from("<I", img, 28)[0]
    assert entry == kernel.mb_entry
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    body = img[entry - abi.KERNEL_PHYS:kernel.symbols["boot32.mb_long"] - abi.KERNEL_PHYS]
    insns = list(cs.disasm(body, entry))
    assert sum(i.size for i in insns) == len(body)
    lgdt = [i for i in insns if i.mnemonic == "lgdt"]
    assert lgdt and not lgdt[0].bytes.startswith(b"\x66"), "16-bit lgdt would truncate the base"


def test_build_is_cached(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "abi.inc").write_text(abi.asm_include())
    a = kb.build_kernel(gen, tmp_path / "k")
    mtime = (tmp_path / "k" / "kernel.bin").stat().st_mtime_ns
    b = kb.build_kernel(gen, tmp_path / "k")
    assert a.image == b.image and a.symbols == b.symbols
    assert (tmp_path / "k" / "kernel.bin").stat().st_mtime_ns == mtime
    assert kb.load_map(tmp_path / "k" / "kernel.map")["kernel_start64"] == a.entry64


def test_undefined_symbol_is_an_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in paths.KERNEL_SRC.iterdir():
        (src / f.name).write_text(f.read_text())
    (src / "entry.s").write_text((src / "entry.s").read_text() + "\n    jmp no_such_label\n")
    with pytest.raises(kb.KernelBuildError, match="no_such_label"):
        kb.assemble(src, abi.asm_include())


def test_no_operand_adds_two_symbols():
    """keystone 0.9.2 silently mis-adds two .equ symbols in one operand."""
    import re
    pat = re.compile(r"\b[A-Z][A-Z0-9_]{2,}\s*[-+]\s*[A-Z][A-Z0-9_]{2,}\b")
    bad = [f"{f.name}:{n}: {line.strip()}"
           for f in sorted(paths.KERNEL_SRC.glob("*.s"))
           for n, line in enumerate(f.read_text().splitlines(), 1)
           if not line.lstrip().startswith(("/*", "*", "#")) and pat.search(line.split("/*")[0])]
    assert not bad, "\n".join(bad)


def test_decimal_constants_stay_decimal(kernel):
    """keystone reads decimal as hex after a .macro; the build expands macros
    itself.  The page walk must shift by 39/30/21/12 and mask with 511."""
    insns, _ = code_insns(kernel)
    ops = {(i.mnemonic, i.op_str.split(", ")[-1]) for i in insns if i.op_str.count(",") == 1}
    for want in [("shr", "0x27"), ("shr", "0x1e"), ("shr", "0x15"), ("shl", "0xc"),
                 ("shr", "0x18"), ("and", "0x1ff"), ("and", "0xfffffffffffff000")]:
        assert want in ops, want
    assert not {o for o in ops if o[1] in ("0x511", "0x39", "0x47", "0xffffffffffffbf6a")}


def test_macro_expansion():
    text = ".macro M a, bb\n    mov \\a, \\bb\n.endm\nM rax, rbx\n    M rcx, 12\n"
    assert kb.expand_macros(text).split() == ["mov", "rax,", "rbx", "mov", "rcx,", "12"]
    with pytest.raises(kb.KernelBuildError):
        kb.expand_macros(".macro M a\nnop\n.endm\nM 1, 2\n")
    # a macro without parameters does not take the next line as its parameter list
    assert kb.expand_macros(".macro Z\n    xor eax, eax\n.endm\nZ\n").split() == ["xor", "eax,", "eax"]


def test_sources_write_numbers_above_nine_in_hex():
    """keystone 0.9.2 sometimes reads decimal literals as hex; hex is unambiguous."""
    import re
    num = re.compile(r"(?<![\w.$])(\d{2,})(?![\w])")
    bad = []
    for f in sorted(paths.KERNEL_SRC.glob("*.s")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("/*")[0]
            if code.strip().startswith(("*", "#")):
                continue
            if num.search(code):
                bad.append(f"{f.name}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)
