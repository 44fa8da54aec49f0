"""Page walks and dumps (pure), and the machine on real KVM with tiny guests."""
import os
import signal
import struct
import threading
import time

import pytest

from conftest import (requires_kvm, make_tiny_boot, assemble, HELLO_ASM, CODE, OUT_RING,
                      IN_RING, PLATFORM, TINY_RAM)
from vmm import abi
from vmm.memory import GuestMemory, GuestMemoryError, walk, translate, read_virt, format_walk
from vmm.dump import (CpuSnapshot, Segment, Symbols, decode_rflags, dump_state, panic_dump,
                      decode_panic_frame, disassemble)

P, W, U, PS, NX = abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_PS, abi.PTE_NX


# --------------------------------------------------------------------------
# Page walk on hand-built tables
# --------------------------------------------------------------------------
def build_tables():
    mem = GuestMemory.from_buffer(bytearray(0x100000))
    cr3 = 0x1000
    va4k = 0x0000_7F12_3456_7000
    mem.write_u64(cr3 + ((va4k >> 39) & 511) * 8, 0x2000 | P | W | U)
    mem.write_u64(0x2000 + ((va4k >> 30) & 511) * 8, 0x3000 | P | W | U)
    mem.write_u64(0x3000 + ((va4k >> 21) & 511) * 8, 0x4000 | P | U)         # RO at PD
    mem.write_u64(0x4000 + ((va4k >> 12) & 511) * 8, 0x8000 | P | W | U | NX)
    mem.write_u64(0x4000 + (((va4k >> 12) + 1) & 511) * 8, 0x5000 | P | W | U)  # next page
    # kernel half: 2 MiB page at KBASE -> phys 0
    mem.write_u64(cr3 + 511 * 8, 0x6000 | P | W)
    mem.write_u64(0x6000 + 510 * 8, 0x7000 | P | W)
    mem.write_u64(0x7000, 0 | P | W | PS)
    return mem, cr3, va4k


def test_walk_4k_page():
    mem, cr3, va = build_tables()
    w = walk(mem, cr3, va + 0x123)
    assert w.phys == 0x8123 and w.page_size == 4096
    assert w.user and not w.writable and w.nx
    assert [s.level for s in w.steps] == [4, 3, 2, 1]
    assert "4 KiB page" in format_walk(w)


def test_walk_2m_page():
    mem, cr3, _ = build_tables()
    w = walk(mem, cr3, abi.KBASE + 0x1234)
    assert w.phys == 0x1234 and w.page_size == 2 << 20 and not w.user


def test_walk_not_present_and_outside_ram():
    mem, cr3, va = build_tables()
    w = walk(mem, cr3, 0x1000)
    assert w.phys is None and "PML4[0] not present" in w.error
    mem.write_u64(cr3 + 8, 0x4000_0000 | P)               # table beyond RAM
    w = walk(mem, cr3, 1 << 39)
    assert w.phys is None and "outside RAM" in w.error
    assert translate(mem, cr3, 0xdead000) is None


def test_read_virt_across_pages():
    mem, cr3, va = build_tables()
    mem.write(0x8FFE, b"ab")
    mem.write(0x5000, b"cd")
    assert read_virt(mem, cr3, va + 0xFFE, 4) == b"abcd"
    assert read_virt(mem, cr3, va + 0x1FFE, 4) is None       # third page unmapped


def test_memory_bounds():
    mem = GuestMemory(1 << 20)
    mem.write_u32(0x100, 0xdeadbeef)
    assert mem.read_u32(0x100) == 0xdeadbeef
    assert bytes(mem.read(0x100, 2)) == b"\xef\xbe"
    with pytest.raises(GuestMemoryError):
        mem.read(0xFFFFF, 2)
    mem.close()


# --------------------------------------------------------------------------
# Dumps
# --------------------------------------------------------------------------
def test_symbols_and_flags():
    s = Symbols({"start": 0x1000, "loop": 0x1010, "far": 0x9000_0000})
    assert s.lookup(0x1000) == "start"
    assert s.lookup(0x1012) == "loop+0x2"
    assert s.lookup(0xFFF) is None
    assert s.lookup(0x1010 + 0x20_0000) is None               # too far from any symbol
    assert decode_rflags(0x246) == "PF ZF IF"
    assert decode_rflags(0x3002) == "IOPL=3"


def snap_at(rip, rsp=0x9000, cr3=0x1000):
    regs = {n: 0 for n in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                           "r10", "r11", "r12", "r13", "r14", "r15"]}
    regs.update(rip=rip, rsp=rsp, rflags=0x202, rax=0x1122334455667788)
    return CpuSnapshot(regs, cr0=0x80050033, cr3=cr3, cr4=0x620, efer=0xD01, cr2=0xdead000,
                       cs=Segment(0x10, 0, 0xFFFFFFFF, 0xB, 0, 1, 1),
                       ss=Segment(0x18, 0, 0xFFFFFFFF, 3, 0, 0, 1))


def identity_mem():
    """1 MiB of RAM, identity-mapped by one 2 MiB page."""
    mem = GuestMemory.from_buffer(bytearray(0x100000))
    mem.write_u64(0x1000, 0x2000 | P | W)
    mem.write_u64(0x2000, 0x3000 | P | W)
    mem.write_u64(0x3000, P | W | PS)
    return mem


def test_dump_format():
    mem = identity_mem()
    mem.write(0x5000, assemble("mov rax, 1\nud2", 0x5000))
    text = dump_state("test stop", snap_at(0x5000), mem, {"kmain": 0x4ff0})
    assert text.startswith("=== xomb-vmm: test stop ===")
    assert "RIP 0x0000000000005000 <kmain+0x10>" in text
    assert "RAX 0x1122334455667788" in text
    assert "RFLAGS 0x00000202 [IF]" in text
    assert "CR0 0x80050033 [PE MP ET NE WP AM PG]" in text
    assert "EFER 0xd01 [SCE LME LMA NXE]" in text
    assert "=> 0x0000000000005000 <kmain+0x10>:" in text
    assert "mov eax, 1" in text or "mov rax, 1" in text
    assert "ud2" in text
    unmapped = dump_state("x", snap_at(0x4000_0000), mem)
    assert "code not mapped" in unmapped


def test_panic_frame_decode():
    mem = identity_mem()
    mem.write(0x6000, assemble("mov qword ptr [rbx], rax", 0x6000))
    rsp = 0x8f00
    frame = [14, 0x2, 0x6000, abi.GDT_UCS, 0x10202, 0x7ff000, abi.GDT_UDS]
    mem.write(rsp + 16, struct.pack("<7Q", *frame))          # two words pushed above it
    snap = snap_at(0x4000, rsp=rsp)
    f = decode_panic_frame(mem, snap, 14)
    assert f and f.at == rsp + 16 and f.rip == 0x6000 and f.cs == abi.GDT_UCS
    text = panic_dump(snap, 14, mem, {"user_store": 0x6000, "panic_stub": 0x3ff0})
    assert "kernel panic: vector 14 (#PF page fault)" in text
    assert "not-present, write, supervisor" in text
    assert "RIP 0x0000000000006000 <user_store>  CS 0x33 (ring 3)" in text
    assert "mov qword ptr [rbx], rax" in text
    assert "walk 0x000000000dead000" in text
    assert decode_panic_frame(mem, snap, 13) is None
    assert "no exception frame found" in panic_dump(snap, 13, mem)


def test_disassemble_stops_at_padding():
    out = disassemble(b"\x90\x90" + b"\0" * 10, 0x1000, count=5)
    assert len(out) == 2


# --------------------------------------------------------------------------
# Real VMs
# --------------------------------------------------------------------------
def run_tiny(asm, timeout=10.0, symbols=None, io=None, **kw):
    from vmm.machine import Machine
    from devices.console import ConsoleIO
    io = io or ConsoleIO.memory()
    with Machine(make_tiny_boot(asm, symbols), console=io, log=open(os.devnull, "w"), **kw) as m:
        status = m.run(timeout=timeout)
        return m, status, io


@requires_kvm
def test_hello_console_and_power_off():
    m, status, io = run_tiny("xor r15d, r15d\n" + HELLO_ASM)
    assert status == 7
    assert bytes(io.output.data) == b"hello\n"
    assert m.stats["boot_to_prompt_ms"] > 0
    assert m.stats["exits"].get("MMIO") == 2          # boot timer + exit, no doorbell exit


@requires_kvm
def test_doorbell_never_exits():
    """Ring the doorbell unconditionally: the ioeventfd absorbs it."""
    m, status, io = run_tiny("mov r15d, 1\n" + HELLO_ASM)
    assert status == 7 and bytes(io.output.data) == b"hello\n"
    assert m.stats["exits"] == {"MMIO": 2}
    assert m.console.stats["doorbell_exits"] == 0


@requires_kvm
def test_triple_fault():
    m, status, _ = run_tiny("nop\nud2")                 # IDT limit 0
    assert status == m.STATUS_TRIPLE_FAULT != 0
    assert "triple fault" in m.last_dump and "SHUTDOWN" in m.last_dump
    assert "ud2" in m.last_dump


PANIC_ASM = f"""
    push {abi.GDT_KDS}
    push rsp
    pushfq
    push {abi.GDT_KCS}
    lea rax, [rip + faulty]
    push rax
    push 0
    push 13
    mov dx, {abi.PANIC_PORT}
    mov al, 13
    out dx, al
    hlt
faulty:
    mov rax, qword ptr [rbx]
"""


@requires_kvm
def test_kernel_panic_dump_has_symbol():
    code = assemble(PANIC_ASM, CODE)
    faulty = CODE + code.rindex(bytes.fromhex("488b03"))
    m, status, _ = run_tiny(PANIC_ASM, symbols={"do_fault": faulty - 4})
    assert status == m.STATUS_PANIC
    assert "kernel panic: vector 13 (#GP general protection)" in m.last_dump
    assert "<do_fault+0x4>" in m.last_dump
    assert "mov rax, qword ptr [rbx]" in m.last_dump


@requires_kvm
def test_unmapped_mmio_and_hlt():
    m, status, _ = run_tiny(f"mov rdi, {TINY_RAM + 15 * 4096}\nmov dword ptr [rdi], 1")
    assert status == m.STATUS_VMM_ERROR and "unmapped guest-physical" in m.last_dump
    m, status, _ = run_tiny("hlt")
    assert status == m.STATUS_HALTED and "halted" in m.last_dump


@requires_kvm
def test_spinning_guest_timeout_and_stop():
    m, status, _ = run_tiny("spin:\njmp spin", timeout=0.3)
    assert status == m.STATUS_TIMEOUT and "timeout" in m.last_dump


@requires_kvm
def test_sigint_stops_with_130():
    t = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    t.start()
    m, status, _ = run_tiny("spin:\njmp spin", timeout=10)
    t.join()
    assert status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@requires_kvm
def test_input_reaches_guest():
    """The guest polls the in ring and powers off with the first byte it gets."""
    asm = f"""
        mov rbx, {IN_RING}
    wait:
        mov eax, dword ptr [rbx + {abi.RING_HEAD}]
        cmp eax, dword ptr [rbx + {abi.RING_TAIL}]
        je wait
        and eax, {abi.RING_SIZE - 1}
        movzx ecx, byte ptr [rbx + rax + {abi.RING_DATA}]
        mov rdi, {PLATFORM}
        mov dword ptr [rdi + {abi.PLAT_EXIT}], ecx
    """
    from devices.console import ConsoleIO
    m, status, _ = run_tiny(asm, io=ConsoleIO.memory(input=b"*"))
    assert status == ord("*")


@requires_kvm
def test_cpus_must_match_the_boot_state():
    from vmm.machine import Machine, MachineError
    with pytest.raises(MachineError, match="boot state describes 1 CPU"):
        Machine(make_tiny_boot("hlt"), cpus=2)


@requires_kvm
def test_create_to_first_exit_is_fast():
    m, status, _ = run_tiny("hlt")
    assert m.stats["create_ms"] < 200 and m.stats["first_exit_us"] < 100_000


@requires_kvm
def test_device_bug_stops_with_dump():
    from devices.base import Device

    class Broken(Device):
        name = "broken"

        def attach(self, machine):
            super().attach(machine)
            machine.register_mmio(5, self)

        def mmio_write(self, page, offset, data):
            raise ZeroDivisionError("oops")
    m, status, _ = run_tiny(f"mov rdi, {TINY_RAM + 5 * 4096}\nmov dword ptr [rdi], 1",
                            devices=[Broken()])
    assert status == m.STATUS_VMM_ERROR
    assert "VMM error while handling a MMIO exit: ZeroDivisionError: oops" in m.last_dump


@requires_kvm
def test_ram_backed_device_page():
    from devices.base import Device

    class Shared(Device):
        name = "shared"

        def attach(self, machine):
            super().attach(machine)
            self.page = machine.ram_device_page(3)
    dev = Shared()
    asm = f"""
        mov rdi, {TINY_RAM + 3 * 4096}
        mov dword ptr [rdi + 8], 0x1234abcd
        mov rdi, {PLATFORM}
        mov dword ptr [rdi + {abi.PLAT_EXIT}], 0
    """
    m, status, _ = run_tiny(asm, devices=[dev])
    assert status == 0 and m.stats["exits"] == {"MMIO": 1}    # the RAM page never exits
    assert bytes(dev.page[8:12]) == (0x1234abcd).to_bytes(4, "little")
