"""Live inspection: the page-table tree on hand-built tables, the console API on a running VM,
a real gdb in batch mode, the control socket, and the interactive console (pexpect)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import ROOT, requires_kvm
from vmm import abi
from vmm.pagetable import FrameAllocator, PageTables, PhysMem, encode


# --------------------------------------------------------------------------
# Hand-built tables (no KVM)
# --------------------------------------------------------------------------
class FakeMachine:
    def __init__(self, ram: bytearray, root: int, symbols=None):
        from vmm.memory import GuestMemory
        self.mem = GuestMemory.from_buffer(ram)
        nframes = len(ram) // abi.PAGE
        bi = abi.BootInfo(host=abi.HOST_PVM, ram_bytes=len(ram), nframes=nframes, dev_pfn=nframes,
                          root_phys=root, lstar=0, iomap_base=0, initrd_size=0,
                          console_out_pfn=0, console_in_pfn=0, tsc_khz=0, run_mode=0,
                          first_free_pfn=0)
        self.boot = SimpleNamespace(symbols=symbols or {}, bootinfo=bi)
        from vmm.dump import Symbols
        self.symbols = Symbols(self.boot.symbols)
        self.debug_handlers, self.on_park, self.kvm = [], None, None
        self.paused, self._in_loop, self.stopping = True, False, False
        self.vcpu = SimpleNamespace(get_sregs=lambda: SimpleNamespace(cr3=root))


def build_two_spaces():
    """Root A (4 KiB + 2 MiB pages, NX, a non-present entry, a child slot, self-map) and child
    B, which shares A's PDPT for PML4[1] (a shared subtree)."""
    mem = PhysMem()
    alloc = FrameAllocator(0x600000, 0x800000)
    a = PageTables(mem, alloc)
    a.map(0x400000, 0x100000, abi.PTE_U, 4)                         # r-x, 4 pages contiguous
    a.map(0x404000, 0x200000, abi.PTE_U | abi.PTE_W | abi.PTE_NX, 2)  # rw- NX
    a.map_large(0x4000_0000, 0x20_0000, abi.PTE_U | abi.PTE_W)      # one 2 MiB page
    a.set(0x406000, 0x1234_5000, level=1)                           # not present, non-zero
    a.map(1 << 39, 0x300000, abi.PTE_U | abi.PTE_W, 1)              # PML4[1]: to be shared
    b = PageTables(mem, alloc)
    shared = mem.read_u64(a.root + 8)
    mem.write_u64(b.root + 8, shared)
    mem.write_u64(a.root + (abi.PML4_HANDLE0 + 2) * 8, b.root | abi.PTE_SLOT)      # child 2
    mem.write_u64(b.root + (abi.PML4_HANDLE0 + 1) * 8, a.root | abi.PTE_SLOT)      # parent
    for r in (a.root, b.root):
        mem.write_u64(r + abi.PML4_SELF * 8, r | abi.PTE_P | abi.PTE_U | abi.PTE_NX)
        mem.write_u64(r + abi.PML4_INFO * 8, 0x400000 << 1)
    ram = bytearray(8 << 20)
    for pa, data in mem.runs():
        ram[pa:pa + len(data)] = data
    for r, n in ((a.root, 9), (b.root, 3)):
        o = abi.FRAMES_PHYS + (r >> 12) * 8
        ram[o:o + 8] = abi.frame_entry(abi.FT_ROOT, n).to_bytes(8, "little")
    return ram, a.root, b.root


def _flat(tree):
    for n in tree:
        yield n
        yield from _flat(n.get("children", []))


def test_pt_tree_on_hand_built_tables():
    from vmm.inspect import Inspector
    ram, ra, rb = build_two_spaces()
    ins = Inspector(FakeMachine(ram, ra))
    d = ins.pt(ra)
    nodes = list(_flat(d["tree"]))
    leaves = [n for n in nodes if n["kind"] == "leaf"]
    code = next(n for n in leaves if n["va"] == 0x400000)
    assert code["pages"] == 4 and code["pa"] == 0x100000 and "NX" not in code["flags"]
    data = next(n for n in leaves if n["va"] == 0x404000)
    assert data["pages"] == 2 and "NX" in data["flags"] and "W" in data["flags"]
    big = next(n for n in leaves if n["va"] == 0x4000_0000)
    assert big["page_size"] == 2 << 20 and "PS" in big["flags"]
    np = [n for n in nodes if n["kind"] == "not-present" and n["entry"] == 0x1234_5000]
    assert np and np[0]["va"] == 0x406000
    slot = [n for n in nodes if n["kind"] == "slot"]
    assert [s["root"] for s in slot] == [rb]
    assert any(n["kind"] == "self-map" for n in nodes)
    shared = [n for n in nodes if n.get("shared_with")]
    assert shared and shared[0]["index"] == 1 and shared[0]["shared_with"] == [rb]
    assert d["entry"] == 0x400000 and d["frame"]["count"] == 9
    tree = ins.as_tree()
    assert tree["root"] == ra and tree["children"][0]["root"] == rb
    assert tree["children"][0]["parent"] == ra and tree["children"][0]["held_pages"] == 3
    from vmm.render import plain, render
    text = plain(render("pt", d))
    assert "shared with" in text and "self-map" in text and "child handle 2" in text


def test_vtop_steps_and_rights():
    from vmm.inspect import Inspector
    ram, ra, rb = build_two_spaces()
    ins = Inspector(FakeMachine(ram, ra))
    w = ins.vtop(0x405123, ra)
    assert w["present"] and w["pa"] == 0x201123 and w["rights"] == "rw- u"
    assert [s["level"] for s in w["steps"]] == ["PML4", "PDPT", "PD", "PT"]
    w = ins.vtop(0x4000_1234, ra)
    assert w["size"] == 2 << 20 and w["pa"] == 0x20_1234
    w = ins.vtop(0x406000, ra)
    assert not w["present"] and "not present" in w["reason"]
    w = ins.vtop(abi.PML4_HANDLE0 + 2 << 39 | 0xFFFF_0000_0000_0000, ra)
    assert not w["present"] and w["steps"][0]["slot_root"] == rb


def test_pt_speed_fully_populated_256m(capsys):
    """Prints the figure (no timed assertion): `pt` of a 256 MiB fully mapped address space."""
    from vmm.inspect import Inspector
    mem = PhysMem()
    alloc = FrameAllocator(0x600000, 0xA00000)
    a = PageTables(mem, alloc)
    a.map(0x4000_0000, 0x1000_0000, abi.PTE_U | abi.PTE_W | abi.PTE_A | abi.PTE_D, 65536)
    ram = bytearray(16 << 20)
    for pa, data in mem.runs():
        ram[pa:pa + len(data)] = data
    ins = Inspector(FakeMachine(ram, a.root))
    best = min(ins.pt(a.root)["ms"] for _ in range(3))
    d = ins.pt(a.root)
    assert d["leaves"] == 65536
    with capsys.disabled():
        print(f"\n[figure] pt of a fully populated 256 MiB address space: {best:.1f} ms")


# --------------------------------------------------------------------------
# A live VM through the API
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live():
    from vmm.kvm import Kvm
    try:
        Kvm().close()
    except Exception as e:
        pytest.skip(f"needs /dev/kvm: {e}")
    from vmm import hostinfo
    from vmm.build import build_all
    from vmm.bootimage import build_boot_state
    from vmm.machine import Machine
    from vmm.inspect import Inspector
    from vmm.console_ui import Commands
    from devices.console import ConsoleIO, MemorySink, QueueSource
    b = build_all()
    boot = build_boot_state(b.kernel, b.programs, ram_bytes=128 << 20, host=hostinfo.host_type())
    q, out = QueueSource(), MemorySink()
    m = Machine(boot, console=ConsoleIO(out, q))
    ins = Inspector(m)
    th = threading.Thread(target=m.run, kwargs={"timeout": 120}, daemon=True)
    th.start()
    assert out.wait_for(b"xsh$ ", 30), out.data
    yield SimpleNamespace(m=m, ins=ins, cmd=Commands(ins), q=q, out=out)
    m.request_stop(0)
    th.join(10)
    m.close()


@requires_kvm
def test_console_commands_json(live, capsys):
    c = live.cmd
    for line in ("regs", "cregs", "sregs", "pt", "vtop 0x400000", "x 0x400000 32",
                 "xp 0x200000 16", "dis sys_map 4", "as", "stats", "devices", "iommu", "help"):
        r = c.execute(line + " --json")
        assert r["ok"], (line, r)
        json.dumps(r, default=str)
        t = c.execute(line)
        assert t["ok"] and t["text"], line
    assert c.execute("xp 0x200000 8 --json")["data"]["data"] == \
        abi.BOOTINFO_MAGIC.to_bytes(8, "little").hex()
    assert "no IOMMU yet" in c.execute("iommu")["text"] or c.execute("iommu --json")["data"]
    a = c.execute("as --json")["data"]
    assert a["root"] == live.m.boot.bootinfo.root_phys and a["program"] == "init"
    assert any(ch["program"] == "xsh" for ch in a["children"])
    assert "<sys_map>" in c.execute("dis sys_map 2")["text"]
    assert not c.execute("frobnicate")["ok"]
    t = []
    for _ in range(20):
        t0 = time.perf_counter()
        live.m.pause()
        live.m.resume()
        t.append((time.perf_counter() - t0) * 1000)
    with capsys.disabled():
        print(f"\n[figure] pause + resume of all vCPUs: median {sorted(t)[10]:.3f} ms, "
              f"max {max(t):.3f} ms")


@requires_kvm
def test_break_step_cont_and_syscall_trace(live):
    c, ins = live.cmd, live.ins
    assert c.execute("stop")["ok"]
    r = c.execute("break sys_map")
    assert r["ok"], r
    seq = ins.dbg.stop_seq
    assert c.execute("cont")["ok"]
    live.q.push(b"hello traced\n")
    ev = ins.dbg.wait_stop(20, after=seq)
    assert ev is not None and ev.reason == "breakpoint", ev
    regs = c.execute("regs --json")["data"]
    assert regs["rip"] == live.m.boot.symbols["sys_map"] and regs["symbol"] == "sys_map"
    s = c.execute("step 2 --json")["data"]
    assert s["reason"] == "step" and s["rip"] > regs["rip"]
    assert c.execute("delete sys_map")["ok"]
    assert c.execute("trace syscalls on")["ok"]
    assert c.execute("cont")["ok"]
    assert live.out.wait_for(b"traced", 30)
    time.sleep(0.5)
    recs = ins.systrace.records
    assert any(r["name"] == "MAP" and r.get("outcome") == "return" for r in recs), recs[:5]
    assert any(r["name"] == "YIELD" and r.get("outcome") == "yield" for r in recs)
    assert c.execute("trace syscalls show 5")["ok"]
    c.execute("trace syscalls off")
    live.q.push(b"hello after\n")
    assert live.out.wait_for(b"after", 30)
    # a breakpoint in user code (the shell's readline), twice
    assert c.execute("stop")["ok"]
    assert c.execute("break xsh:readline")["ok"]
    for word in (b"u1", b"u2"):
        seq = ins.dbg.stop_seq
        assert c.execute("cont")["ok"]
        live.q.push(b"hello " + word + b"\n")
        ev = ins.dbg.wait_stop(20, after=seq)
        assert ev is not None and ev.reason == "breakpoint", ev
        regs = c.execute("regs --json")["data"]
        assert regs["cpl"] == 3 and regs["symbol"] == "xsh:readline", regs
    assert c.execute("delete all")["ok"]
    assert c.execute("cont")["ok"]
    assert live.out.wait_for(b"argv[1] = \"u2\"", 30)


# --------------------------------------------------------------------------
# Real gdb, the control socket, the interactive console
# --------------------------------------------------------------------------
def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@requires_kvm
@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed")
def test_real_gdb_and_control_socket(tmp_path):
    subprocess.run([sys.executable, "-m", "vmm.cli", "build"], cwd=ROOT, check=True,
                   capture_output=True)
    port = _free_port()
    sock = str(tmp_path / "ctl.sock")
    vm = subprocess.Popen([sys.executable, "-m", "vmm.cli", "boot", "--gdb", f"127.0.0.1:{port}",
                           "--control", sock], cwd=ROOT, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2)                   # the shell reaches its prompt
        script = tmp_path / "g.gdb"
        script.write_text(f"""set pagination off
target remote 127.0.0.1:{port}
break sys_map
continue
info registers rip cr3 eflags
stepi
x/2i $pc
monitor phys on
x/gx 0x200000
monitor phys off
monitor as
delete
detach
""")

        def poke():
            time.sleep(3)
            vm.stdin.write(b"hello via-gdb\n")
            vm.stdin.flush()
        threading.Thread(target=poke, daemon=True).start()
        g = subprocess.run(["gdb", "-q", "-batch", "-x", str(script),
                            str(ROOT / "build" / "kernel" / "kernel.sym.elf")],
                           capture_output=True, text=True, timeout=60)
        out = g.stdout + g.stderr
        assert "Breakpoint 1, 0xffffffff" in out and "in sys_map ()" in out, out
        assert "<sys_map+" in out, out
        assert "cr3" in out and "0x584f4d42494e464f" in out, out
        assert "AS 0x" in out and "init" in out, out
        # Ctrl-C: raw RSP, continue then interrupt -> SIGINT stop reply
        with socket.create_connection(("127.0.0.1", port), timeout=20) as rsp:
            def pkt(p: bytes) -> bytes:
                return b"$" + p + b"#" + b"%02x" % (sum(p) & 0xFF)
            rsp.sendall(pkt(b"?"))
            buf = b""
            while b"#" not in buf:
                buf += rsp.recv(4096)
            rsp.sendall(b"+" + pkt(b"c"))
            time.sleep(0.5)
            rsp.sendall(b"\x03")
            buf = b""
            while b"T02" not in buf:
                d = rsp.recv(4096)
                assert d, buf
                buf += d
            rsp.sendall(b"+" + pkt(b"D"))
            time.sleep(0.3)
        a = subprocess.run([sys.executable, "-m", "vmm.cli", "attach", sock, "-c", "regs", "-c",
                            "as", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert a.returncode == 0, a.stderr
        lines = [json.loads(x) for x in a.stdout.splitlines()]
        assert lines[0]["ok"] and "rip" in lines[0]["data"]
        vm.stdin.write(b"exit 3\n")
        vm.stdin.flush()
        out, err = vm.communicate(timeout=30)
        assert b"via-gdb" in out, out
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()


@requires_kvm
def test_interactive_console_pexpect():
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "vmm.cli", "boot", "--console"],
                          encoding="utf-8", timeout=60, cwd=str(ROOT),
                          env={**os.environ, "HOME": "/tmp"})
    try:
        child.expect(r"xsh\$ ")
        child.send("\x01c")
        child.expect(r"\(xomb\) ")
        child.sendline("regs")
        child.expect("RIP")
        child.expect(r"\(xomb\) ")
        child.sendline("as")
        child.expect("xsh")
        child.expect(r"\(xomb\) ")
        child.sendline("quit")
        child.expect("back to the guest")
        child.sendline("hello back")
        child.expect("Hello from hello")
        child.sendline("exit 4")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


@requires_kvm
def test_pause_parks_every_vcpu_and_breaks_on_either(capsys):
    """Two vCPUs: pause stops both (registers of each readable), resume runs both; a
    breakpoint hit on whichever vCPU reaches it becomes the debugger's focus."""
    import inspect as _inspect
    from vmm import hostinfo
    from vmm.build import build_all
    from vmm.bootimage import build_boot_state
    from vmm.machine import Machine
    from vmm.inspect import Inspector
    from devices.console import ConsoleIO, MemorySink, QueueSource
    if "ncpus" not in _inspect.signature(build_boot_state).parameters:
        pytest.skip("no SMP boot state")
    b = build_all()
    boot = build_boot_state(b.kernel, b.programs, ram_bytes=128 << 20,
                            host=hostinfo.host_type(), ncpus=2)
    q, out = QueueSource(), MemorySink()
    m = Machine(boot, console=ConsoleIO(out, q), cpus=2)
    ins = Inspector(m)
    th = threading.Thread(target=m.run, kwargs={"timeout": 60}, daemon=True)
    th.start()
    try:
        assert out.wait_for(b"xsh$ ", 30)
        t = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert m.pause()
            assert all(v.get_regs().rip for v in m.vcpus)
            m.resume()
            t.append((time.perf_counter() - t0) * 1000)
        with capsys.disabled():
            print(f"\n[figure] pause + resume of 2 vCPUs: median {sorted(t)[10]:.3f} ms")
        ins.break_("sys_map")
        seq = ins.dbg.stop_seq
        ins.cont()
        q.push(b"hello smp\n")
        ev = ins.dbg.wait_stop(20, after=seq)
        assert ev is not None and ev.reason == "breakpoint"
        assert ins.regs(0)["symbol"] == "sys_map" and ins.dbg.focus in m.vcpus
        ins.delete("all")
        ins.cont()
        assert out.wait_for(b"argv[1] = \"smp\"", 30)
    finally:
        m.request_stop(0)
        th.join(10)
        m.close()


@pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld") and shutil.which("nm")),
                    reason="needs binutils")
def test_symbol_elf_for_gdb(tmp_path):
    from vmm.symfile import write_sym_elf
    out = write_sym_elf({"sys_map": 0xFFFF_FFFF_8010_1665, "vec3": 0xFFFF_FFFF_8010_12A3,
                         "boot32.mb_header": 0x100000, "xsh:main": 0x400000},
                        tmp_path / "k.sym.elf")
    nm = subprocess.run(["nm", str(out)], capture_output=True, text=True, check=True).stdout
    assert "ffffffff80101665 T sys_map" in nm and "ffffffff801012a3 T vec3" in nm
    assert "xsh:main" not in nm
