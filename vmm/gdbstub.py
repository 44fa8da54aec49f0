"""A GDB remote-serial-protocol stub: `xomb-vmm boot --gdb HOST:PORT [--wait-gdb]`.

    (gdb) target remote :1234
    (gdb) symbol-file build/kernel/kernel.sym.elf
    (gdb) break sys_map / hbreak / stepi / continue / Ctrl-C / info registers cr3
    (gdb) monitor regs            # any console command (qRcmd)
    (gdb) monitor phys on         # m/M packets use guest-physical addresses (off: virtual)

Registers: x86-64 target.xml (org.gnu.gdb.i386.core + sse, 32-bit eflags and segment
registers), plus cr0 cr2 cr3 cr4 cr8 efer in feature org.xomb.sys.  FPU/SSE registers read
as zero (not tracked).  Memory is virtual through the current CR3 (all page sizes, the
vCPU's own tables, through vmm/pagetable.walk) unless `monitor phys on`.  One thread per
vCPU.  Breakpoints (Z0 software, Z1 hardware) go through vmm/debugger.py, which knows what
this host can do (see docs/GDB.md).
"""
from __future__ import annotations

import socket
import struct
import threading

from vmm.debugger import DebugError

GPR64 = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip"]
SEGS = ["cs", "ss", "ds", "es", "fs", "gs"]
FPU32 = ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
SYSREGS = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer"]

# (name, bytes) in g-packet order; the regnum is the index.
LAYOUT = ([(n, 8) for n in GPR64] + [("eflags", 4)] + [(n, 4) for n in SEGS]
          + [(f"st{i}", 10) for i in range(8)] + [(n, 4) for n in FPU32]
          + [(f"xmm{i}", 16) for i in range(16)] + [("mxcsr", 4)]
          + [(n, 8) for n in SYSREGS])


def target_xml() -> str:
    def reg(n, size, typ, group=None):
        g = f' group="{group}"' if group else ""
        return f'  <reg name="{n}" bitsize="{size * 8}" type="{typ}"{g}/>'
    core = [reg(n, 8, "code_ptr" if n == "rip" else ("data_ptr" if n in ("rsp", "rbp") else "int64"))
            for n in GPR64]
    core.append(reg("eflags", 4, "int32"))
    core += [reg(n, 4, "int32") for n in SEGS]
    core += [reg(f"st{i}", 10, "i387_ext") for i in range(8)]
    core += [reg(n, 4, "int", "float") for n in FPU32]
    sse = [reg(f"xmm{i}", 16, "uint128", "vector") for i in range(16)]
    sse.append(reg("mxcsr", 4, "int", "vector"))
    sysr = [reg(n, 8, "int64", "system") for n in SYSREGS]
    return ('<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n'
            '<architecture>i386:x86-64</architecture>\n'
            '<feature name="org.gnu.gdb.i386.core">\n' + "\n".join(core) + "\n</feature>\n"
            '<feature name="org.gnu.gdb.i386.sse">\n' + "\n".join(sse) + "\n</feature>\n"
            '<feature name="org.xomb.sys">\n' + "\n".join(sysr) + "\n</feature>\n</target>\n")


def checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def escape_binary(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):
            out += bytes([0x7D, b ^ 0x20])
        else:
            out.append(b)
    return bytes(out)


class GdbStub:
    def __init__(self, inspector, host: str = "127.0.0.1", port: int = 1234, log=None):
        self.ins = inspector
        self.m = inspector.m
        self.dbg = inspector.dbg
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        self.connected = threading.Event()
        self.phys = False
        self.log = log
        self._buf = b""
        self._ack = True
        self._zbps: dict[tuple[int, int], int] = {}
        self.cur = 0                        # vCPU whose registers g/G/p/P use (Hg)
        self.thread = threading.Thread(target=self._serve, name="gdbstub", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass

    # ------------------------------------------------------------ transport
    def _serve(self):
        from devices.base import _block_signals
        _block_signals()
        while not self.m.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conn = conn
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buf, self._ack = b"", True
            try:
                self.dbg.stop()
            except DebugError:
                pass
            self.connected.set()
            try:
                self._session()
            except (OSError, ConnectionError):
                pass
            finally:
                try:
                    conn.close()
                except OSError:
                    pass
                self.conn = None
                for key in list(self._zbps):
                    self._remove_z(key)
                if self.m.paused and not self.m.stopping:
                    self.dbg.cont()

    def _recv_packet(self, timeout: float | None = None) -> bytes | None:
        """Next packet payload; b'\\x03' for an interrupt; None on timeout."""
        conn = self.conn
        conn.settimeout(timeout)
        while True:
            while self._buf[:1] in (b"+", b"-"):
                self._buf = self._buf[1:]
            if self._buf[:1] == b"\x03":
                self._buf = self._buf[1:]
                return b"\x03"
            if self._buf.startswith(b"$"):
                end = self._buf.find(b"#")
                if end >= 0 and len(self._buf) >= end + 3:
                    payload = self._buf[1:end]
                    self._buf = self._buf[end + 3:]
                    if self._ack:
                        conn.sendall(b"+")
                    return payload
            elif self._buf:
                i = self._buf.find(b"$")
                self._buf = self._buf[i:] if i >= 0 else b""
                continue
            try:
                d = conn.recv(65536)
            except socket.timeout:
                return None
            if not d:
                raise ConnectionError("gdb disconnected")
            self._buf += d

    def _send(self, payload: bytes | str):
        if isinstance(payload, str):
            payload = payload.encode()
        self.conn.sendall(b"$" + payload + b"#" + checksum(payload))

    # ------------------------------------------------------------ session
    def _session(self):
        while True:
            pkt = self._recv_packet()
            if pkt == b"\x03":
                self._send(self._stop_reply(interrupted=True))
                continue
            reply = self._handle(pkt)
            if reply is None:
                continue
            self._send(reply)
            if pkt.startswith(b"D") or pkt == b"k":
                return

    def _stop_reply(self, ev=None, interrupted=False) -> str:
        if self.m.stopping and not self.m.paused:
            return "W00"
        if interrupted:
            try:
                self.dbg.stop()
            except DebugError:
                pass
            return "T02thread:01;"
        ev = ev or self.dbg.last_stop
        vs = getattr(self.m, "vcpus", None) or []
        if self.dbg.focus is not None and self.dbg.focus in vs:
            self.cur = vs.index(self.dbg.focus)         # report the vCPU that stopped
        th = f"thread:{self.cur + 1:x};"
        if ev is not None and ev.reason == "breakpoint":
            bp = self.dbg.bps.get(ev.bp)
            kind = "hwbreak" if bp is not None and bp.kind == "hbreak" else "swbreak"
            return f"T05{th}{kind}:;"
        if ev is not None and ev.reason == "exited":
            return "W00"
        return f"T05{th}" if ev is not None and ev.reason == "step" else f"T02{th}"

    def _resume_and_wait(self, step: bool) -> str:
        seq = self.dbg.stop_seq
        try:
            if step:
                self.dbg.step(1)
            else:
                self.dbg.cont()
        except DebugError as e:
            return "E01"
        while True:
            ev = self.dbg.wait_stop(0.05, after=seq)
            if ev is not None:
                return self._stop_reply(ev)
            if self.m.stopping:
                return "W00"
            pkt = self._recv_packet(0.0001)
            if pkt == b"\x03":
                return self._stop_reply(interrupted=True)

    # ------------------------------------------------------------ registers
    def _vcpu(self):
        vs = getattr(self.m, "vcpus", None) or [self.m.vcpu]
        return vs[self.cur if self.cur < len(vs) else 0]

    def _read_regs(self) -> bytes:
        v = self._vcpu()
        r, s = v.get_regs(), v.get_sregs()
        out = bytearray()
        for name, size in LAYOUT:
            if name in GPR64:
                val = getattr(r, name)
            elif name == "eflags":
                val = r.rflags
            elif name in SEGS:
                val = getattr(s, name).selector
            elif name in SYSREGS:
                val = getattr(s, name)
            else:
                val = 0
            out += (val & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        return bytes(out)

    def _write_reg(self, idx: int, raw: bytes):
        name, size = LAYOUT[idx]
        val = int.from_bytes(raw[:size], "little")
        v = self._vcpu()
        if name in GPR64 or name == "eflags":
            r = v.get_regs()
            setattr(r, "rflags" if name == "eflags" else name, val)
            v.set_regs(r)
        elif name in SYSREGS:
            s = v.get_sregs()
            setattr(s, name, val)
            v.set_sregs(s)
        # segments, FPU, SSE: ignored (not tracked by this stub)

    # ------------------------------------------------------------ memory
    def _read_mem(self, addr: int, n: int) -> bytes | None:
        if self.phys:
            if not self.m.mem.contains(addr, n):
                return None
            return self.dbg.read_phys(addr, n)
        return self.dbg.read_virt(addr, n)

    def _write_mem(self, addr: int, data: bytes) -> bool:
        if self.phys:
            if not self.m.mem.contains(addr, len(data)):
                return False
            self.dbg.write_phys(addr, data)
            return True
        return self.dbg.write_virt(addr, data)

    # ------------------------------------------------------------ breakpoints
    def _insert_z(self, typ: int, addr: int) -> str:
        if typ not in (0, 1):
            return ""                           # watchpoints: not supported
        key = (typ, addr)
        if key in self._zbps:
            return "OK"
        try:
            bp = self.dbg.add_breakpoint(addr, kind="hbreak" if typ == 1 else "break")
        except DebugError:
            return "E01"
        self._zbps[key] = bp.id
        return "OK"

    def _remove_z(self, key) -> str:
        bid = self._zbps.pop(key, None)
        if bid is not None and bid in self.dbg.bps:
            try:
                self.dbg.delete(bid)
            except DebugError:
                pass
        return "OK"

    # ------------------------------------------------------------ packets
    def _handle(self, pkt: bytes):
        p = pkt.decode("latin-1")
        if p.startswith("qSupported"):
            return "PacketSize=4000;qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+;vContSupported+"
        if p == "QStartNoAckMode":
            self._send("OK")
            self._ack = False
            return None
        if p.startswith("qXfer:features:read:target.xml:"):
            off, ln = (int(x, 16) for x in p.rsplit(":", 1)[1].split(","))
            xml = target_xml().encode()
            chunk = xml[off:off + ln]
            return (b"l" if off + ln >= len(xml) else b"m") + escape_binary(chunk)
        if p == "?":
            return self._stop_reply()
        if p == "g":
            return self._read_regs().hex()
        if p.startswith("G"):
            raw = bytes.fromhex(p[1:])
            off = 0
            for i, (_, size) in enumerate(LAYOUT):
                if off + size <= len(raw):
                    self._write_reg(i, raw[off:off + size])
                off += size
            return "OK"
        if p.startswith("p"):
            idx = int(p[1:], 16)
            if idx >= len(LAYOUT):
                return "E01"
            regs = self._read_regs()
            off = sum(s for _, s in LAYOUT[:idx])
            return regs[off:off + LAYOUT[idx][1]].hex()
        if p.startswith("P"):
            n, v = p[1:].split("=")
            idx = int(n, 16)
            if idx >= len(LAYOUT):
                return "E01"
            self._write_reg(idx, bytes.fromhex(v))
            return "OK"
        if p.startswith("m"):
            a, n = (int(x, 16) for x in p[1:].split(","))
            data = self._read_mem(a, min(n, 0x2000))
            return data.hex() if data else "E14"
        if p.startswith("M"):
            head, data = p[1:].split(":", 1)
            a, _ = (int(x, 16) for x in head.split(","))
            return "OK" if self._write_mem(a, bytes.fromhex(data)) else "E14"
        if p.startswith("Z") or p.startswith("z"):
            typ, a, _ = p[1:].split(",")
            if p[0] == "Z":
                return self._insert_z(int(typ), int(a, 16))
            return self._remove_z((int(typ), int(a, 16)))
        if p.startswith("vCont?"):
            return "vCont;c;C;s;S"
        if p.startswith("vCont;"):
            acts = p[6:].split(";")
            step = any(a.startswith("s") or a.startswith("S") for a in acts)
            return self._resume_and_wait(step)
        if p.startswith("c") or p.startswith("C"):
            return self._resume_and_wait(False)
        if p.startswith("s") or p.startswith("S"):
            return self._resume_and_wait(True)
        if p.startswith("Hg"):                      # one thread per vCPU: 1 = vCPU 0
            t = int(p[2:], 16) if p[2:] not in ("", "-1") else 1
            self.cur = max(t - 1, 0)
            return "OK"
        if p.startswith("H"):
            return "OK"
        if p.startswith("T"):
            return "OK" if int(p[1:], 16) - 1 < self._nvcpus() else "E01"
        if p == "qfThreadInfo":
            return "m" + ",".join(f"{i + 1:x}" for i in range(self._nvcpus()))
        if p == "qsThreadInfo":
            return "l"
        if p == "qC":
            return "QC1"
        if p == "qAttached":
            return "1"
        if p.startswith("qThreadExtraInfo"):
            t = int(p.split(",")[1], 16)
            return f"vCPU {t - 1}".encode().hex()
        if p.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(p[6:]).decode(errors="replace"))
        if p.startswith("D"):
            return "OK"
        if p == "k":
            self.m.request_stop(self.m.STATUS_QUIT, "killed by gdb")
            return "OK"
        return ""

    def _nvcpus(self) -> int:
        return len(getattr(self.m, "vcpus", None) or [0])

    def _monitor(self, line: str) -> str:
        from vmm.console_ui import Commands
        from vmm.render import plain
        w = line.split()
        if w[:1] == ["phys"]:
            if len(w) > 1:
                self.phys = w[1] in ("on", "1")
            text = f"gdb memory accesses are {'physical' if self.phys else 'virtual (current CR3)'}\n"
        else:
            r = Commands(self.ins).execute(line)
            if r.get("ok"):
                t = r.get("text")
                text = plain(t if isinstance(t, str) else str(t)) + "\n"
            else:
                text = f"error: {r.get('error')}\n"
        for i in range(0, len(text), 1024):
            self._send("O" + text[i:i + 1024].encode().hex())
        return "OK"
