"""Run control for one machine: breakpoints, single step, continue, stop.

    dbg = Debugger(machine)          # before or after machine.run() started (on another thread)
    dbg.stop()                       # pause the vCPU (state consistent, pending I/O completed)
    dbg.add_breakpoint("sys_map")    # symbol, virtual address, or physical (phys=True)
    dbg.cont(); dbg.wait_stop(10)    # -> StopEvent(reason="breakpoint", rip=..., bp=1)
    dbg.step(3); dbg.next()

How a breakpoint is made depends on the host (KVM_CHECK_EXTENSION and the boot info):

* VMX/SVM: ``int3`` patched into guest memory with KVM_GUESTDBG_USE_SW_BP (the exit comes
  before the guest sees the #BP); a guest #BP that is not ours (a user's own int3) is
  re-injected by the machine.  ``hbreak`` uses DR0..DR3 (KVM_GUESTDBG_USE_HW_BP).
* PVM (this project's CI): ring-0 code is emulated instruction by instruction, and the
  emulator cannot emulate ``int3``: it stops with KVM_EXIT_INTERNAL_ERROR (emulation failure)
  *before* executing it, all state intact, rip at the int3.  A patched int3 in kernel code is
  therefore recognised on that exit (machine.EXC_EMUL) and the vCPU simply resumes; no
  KVM_GUESTDBG_USE_SW_BP, so the syscall gate's int3 and a user's own int3 (ring 3, native,
  never reported to the VMM anyway) go to the guest untouched.  (Tried and dropped: ``hlt``
  never exits with the in-kernel LAPIC; ``out dx, al`` is absorbed by the in-kernel PIC when
  dx happens to be 0x20/0x21, e.g. a MAP of 32 pages.)  There are no hardware breakpoints
  (GUEST_DEBUG_HW_BPS = 0), so ``hbreak`` falls back to the same patch and says so.
  User code: see `_user_trap` (caught at the kernel's vec3_trap, undone, re-armed later).

Breakpoints are keyed by *physical* address (the same kernel code is mapped in every address
space; a user page may be shared), so a hit is recognised whatever CR3 is loaded.  Stepping
over an inserted breakpoint removes it for one single step (KVM_GUESTDBG_SINGLESTEP) and puts
it back.  Internal breakpoints (owner set: the syscall trace) never stop the machine.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from vmm import abi
from vmm import pagetable
from vmm.kvm import lib

OWNER = "debugger"
HLT, INT3, OUT_DX_AL = 0xF4, 0xCC, 0xEE


class DebugError(Exception):
    """A debugger request that cannot be done (one-line message)."""


@dataclass
class Breakpoint:
    id: int
    va: int | None          # None: a physical breakpoint
    pa: int
    kind: str = "break"     # break | hbreak | tbreak
    method: str = "hlt"     # hlt | int3 | dr
    owner: str | None = None        # internal user (syscall trace): never stops
    callback: object = None         # internal: callable(debugger, bp, regs)
    hits: int = 0
    enabled: bool = True
    note: str = ""

    def as_dict(self, symbols=None) -> dict:
        d = {"id": self.id, "va": self.va, "pa": self.pa, "kind": self.kind,
             "method": self.method, "hits": self.hits, "enabled": self.enabled}
        if symbols is not None and self.va is not None:
            d["symbol"] = symbols.lookup(self.va)
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class StopEvent:
    reason: str             # breakpoint | step | pause | exited
    rip: int = 0
    bp: int | None = None
    t: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return {"reason": self.reason, "rip": self.rip, "bp": self.bp}


class Debugger:
    def __init__(self, machine):
        self.m = machine
        bi = getattr(machine.boot, "bootinfo", None)
        self.pvm = bool(bi is not None and bi.host == abi.HOST_PVM)
        try:
            self.hw_slots = machine.kvm.check_extension(lib.KVM_CAP_GUEST_DEBUG_HW_BPS)
        except Exception:
            self.hw_slots = 0
        self.patch = INT3
        self.bps: dict[int, Breakpoint] = {}
        self._next_id = 1
        self._patched: dict[int, int] = {}     # pa -> original byte
        self._lock = threading.RLock()
        self._mode = "cont"                     # cont | step
        self._steps_left = 0
        self._stepover_pa: int | None = None
        self._rearm: set[int] = set()
        self._rearm_at: set[int] = set()
        self._hw_off = False
        self.last_stop: StopEvent | None = None
        self._pending_stop: StopEvent | None = None
        self.focus = None                       # the vCPU that stopped last
        self._stop_seq = 0
        self._stop_cond = threading.Condition()
        self.stop_listeners: list = []          # callables(StopEvent), on the vCPU thread
        machine.debug_handlers.append(self._on_debug)
        if self.m.on_park is None:
            self.m.on_park = self._on_park

    # ------------------------------------------------------------ facilities
    def facilities(self) -> dict:
        """What works on this host, and how (for `help`, docs and the gdb stub)."""
        return {
            "host": "PVM" if self.pvm else "VMX/SVM",
            "sw_breakpoints": "int3, seen as an emulation failure (kernel code only)" if self.pvm else "int3 + USE_SW_BP",
            "hw_breakpoints": (f"{self.hw_slots} debug registers" if self.hw_slots and not self.pvm
                               else "none (GUEST_DEBUG_HW_BPS=0): hbreak = patched breakpoint"),
            "single_step": "KVM_GUESTDBG_SINGLESTEP",
            "user_breakpoints": ("int3 caught at the kernel's vec3_trap and undone; re-armed at the "
                                 "next kernel entry (no ring-3 single step on PVM)") if self.pvm else "yes",
            "watchpoints": "no",
        }

    # ------------------------------------------------------------ addresses
    def vcpu(self):
        """The vCPU being debugged: the calling vCPU thread's own in an exit handler, else the
        one that stopped last (breakpoint, step), else the boot vCPU."""
        tl = getattr(getattr(self.m, "_tls", None), "vcpu", None)
        if tl is not None:
            return tl
        return self.focus if self.focus is not None else self.m.vcpu

    def cr3(self) -> int:
        return self.vcpu().get_sregs().cr3

    def translate(self, va: int, cr3: int | None = None) -> int | None:
        if abi.KBASE <= va < abi.KBASE + (2 << 30):
            return va - abi.KBASE
        w = pagetable.walk(self.m.mem.view, self.cr3() if cr3 is None else cr3, va)
        return w.pa if w.present else None

    # ------------------------------------------------------------ patching
    def _insert(self, pa: int):
        if pa in self._patched:
            return
        orig = bytes(self.m.mem.read(pa, 1))[0]
        self._patched[pa] = orig
        self.m.mem.write(pa, bytes([self.patch]))

    def _remove(self, pa: int):
        orig = self._patched.pop(pa, None)
        if orig is not None:
            self.m.mem.write(pa, bytes([orig]))

    def _sync(self, pa: int):
        want = any(b.enabled and b.method != "dr" for b in self.bps.values() if b.pa == pa)
        if want and pa != self._stepover_pa and pa not in self._rearm:
            self._insert(pa)
        elif not want:
            self._remove(pa)

    def original_bytes(self, pa: int, data: bytes) -> bytes:
        """Guest memory as it would be without our patches (memory reads show the truth)."""
        out = bytearray(data)
        for p, orig in self._patched.items():
            if pa <= p < pa + len(out):
                out[p - pa] = orig
        return bytes(out)

    def _hw_list(self) -> list[int]:
        return [b.va for b in self.bps.values() if b.method == "dr" and b.enabled][:4]

    def _apply_debug(self, singlestep: bool = False):
        sw = (not self.pvm) and bool(self._patched)
        hw = [] if self._hw_off else self._hw_list()
        v = self.vcpu()
        allv = getattr(self.m, "vcpus", None) or [v]
        for other in [x for x in allv if x is not v] + [v]:     # ours last (owner record)
            # breakpoints on every vCPU; single step only on the one being stepped
            self.m.set_debug(OWNER, singlestep=singlestep and other is v, sw_breakpoints=sw,
                             hw_breakpoints=hw, vcpu=other)

    # ------------------------------------------------------------ breakpoints
    def resolve(self, where) -> int:
        if isinstance(where, int):
            return where
        s = str(where).strip()
        sym = self.m.boot.symbols.get(s) if hasattr(self.m.boot, "symbols") else None
        if sym is not None:
            return sym
        try:
            return int(s, 0)
        except ValueError:
            pass
        if "+" in s:
            base, off = s.split("+", 1)
            return self.resolve(base) + int(off, 0)
        raise DebugError(f"no symbol {s!r} (and not a number)")

    def add_breakpoint(self, where, phys: bool = False, kind: str = "break",
                       owner: str | None = None, callback=None) -> Breakpoint:
        addr = self.resolve(where)
        with self._lock:
            if phys:
                va, pa = None, addr
                if not self.m.mem.contains(pa):
                    raise DebugError(f"physical address {pa:#x} is outside RAM")
            else:
                va = addr
                pa = self.translate(va)
                if pa is None:
                    raise DebugError(f"{va:#x} is not mapped in the current address space")
                if self.pvm and va < abi.USER_TOP and owner is None:
                    self._user_hooks_on()
            if self.pvm and owner is None and self._leaves_ring0(pa):
                raise DebugError("a breakpoint on a return to user mode (sysret/iretq) cannot be "
                                 "stepped over on PVM (ring-3 single steps go to the guest)")
            method = "int3"
            note = ""
            if kind == "hbreak":
                if self.hw_slots and not self.pvm and va is not None and len(self._hw_list()) < 4:
                    method = "dr"
                else:
                    note = ("no hardware breakpoints on this host (GUEST_DEBUG_HW_BPS="
                            f"{self.hw_slots}): patched {method} instead")
            bp = Breakpoint(self._next_id, va, pa, kind, method, owner, callback, note=note)
            self._next_id += 1
            self.bps[bp.id] = bp
            if method != "dr":
                self._sync(pa)
            if self.m.paused or not self.m._in_loop:
                self._apply_debug()
            return bp

    def delete(self, what) -> list[int]:
        """Delete by id, address (virtual or physical) or symbol; 'all' deletes every
        user breakpoint.  Returns the ids deleted."""
        with self._lock:
            if what == "all":
                ids = [b.id for b in self.bps.values() if b.owner is None]
            elif isinstance(what, int) and what in self.bps:
                ids = [what]
            else:
                try:
                    n = int(str(what), 0) if not isinstance(what, int) else what
                except ValueError:
                    n = None
                if n is not None and n in self.bps and n < 1 << 20:
                    ids = [n]
                else:
                    addr = self.resolve(what)
                    ids = [b.id for b in self.bps.values() if b.owner is None
                           and (b.va == addr or (b.va is None and b.pa == addr))]
            if not ids:
                raise DebugError(f"no breakpoint {what}")
            for i in ids:
                bp = self.bps.pop(i)
                if bp.method != "dr":
                    self._sync(bp.pa)
            if self.m.paused or not self.m._in_loop:
                self._apply_debug()
            return ids

    def list(self, internal: bool = False) -> list[Breakpoint]:
        return [b for b in self.bps.values() if internal or b.owner is None]

    # ------------------------------------------------------------ run control
    def stop(self, timeout: float = 5.0) -> StopEvent:
        if not self.m.paused:
            if not self.m.pause(timeout):
                raise DebugError("the vCPU did not stop")
            self._note_stop(StopEvent("pause", self.vcpu().get_regs().rip))
        return self.last_stop or StopEvent("pause")

    def _prepare(self, singlestep: bool):
        """Before resuming: step over a breakpoint at rip (remove it for one step)."""
        rip = self.vcpu().get_regs().rip
        pa = self.translate(rip)
        if self.pvm and rip < abi.USER_TOP:
            if singlestep:
                raise DebugError("single-stepping ring-3 code is not possible on PVM (the #DB "
                                 "goes to the guest): set a breakpoint and continue")
            if pa is not None and pa in self._patched:
                self._remove(pa)                # re-armed at the next kernel entry
                self._rearm.add(pa)
                for a in self._rearm_at:
                    if self.translate(a) not in self._patched:
                        self.add_breakpoint(a, owner="user-bp", callback=lambda *x: None)
            self._apply_debug(False)
            return
        if pa is not None and pa in self._patched:
            self._remove(pa)
            self._stepover_pa = pa
            singlestep = True
        if any(b.method == "dr" and b.va == rip for b in self.bps.values()):
            self._hw_off = True
            singlestep = True
        self._apply_debug(singlestep)

    def cont(self):
        with self._lock:
            self._mode = "cont"
            if self.m.paused:
                self._prepare(False)
        self.m.resume()

    def step(self, n: int = 1):
        if n < 1:
            raise DebugError("step count must be at least 1")
        with self._lock:
            if not self.m.paused:
                raise DebugError("the machine is running: stop it first")
            self._mode = "step"
            self._steps_left = n
            try:
                self._prepare(True)
            except DebugError:
                self._mode = "cont"
                raise
        self.m.resume()

    def next(self):
        """Step over a call (temporary breakpoint after it), else one step."""
        regs = self.vcpu().get_regs()
        code = self.read_virt(regs.rip, 16)
        import capstone
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        insn = next(md.disasm(code or b"", regs.rip), None)
        if insn is None or insn.mnemonic != "call":
            return self.step(1)
        bp = self.add_breakpoint(regs.rip + insn.size, kind="tbreak")
        bp.note = "temporary (next)"
        self.cont()

    def wait_stop(self, timeout: float | None = None, after: int | None = None) -> StopEvent | None:
        """Wait for the next stop (after stop number `after`, default: the current one)."""
        seq = self._stop_seq if after is None else after
        with self._stop_cond:
            ok = self._stop_cond.wait_for(lambda: self._stop_seq > seq or self.m.stopping,
                                          timeout)
        if self.m.stopping and self._stop_seq <= seq:
            return StopEvent("exited")
        return self.last_stop if ok else None

    @property
    def stop_seq(self) -> int:
        return self._stop_seq

    def _note_stop(self, ev: StopEvent):
        self.last_stop = ev
        with self._stop_cond:
            self._stop_seq += 1
            self._stop_cond.notify_all()
        for cb in list(self.stop_listeners):
            try:
                cb(ev)
            except Exception:
                pass

    def _on_park(self, machine):
        """The vCPU is parked: publish the stop that parked it (state now readable)."""
        ev, self._pending_stop = self._pending_stop, None
        if ev is not None:
            self._note_stop(ev)

    # ------------------------------------------------------------ exits (vCPU thread)
    def _on_debug(self, m, exc, pc, dr6) -> bool:
        if exc == 257:                              # `out dx, al` (PVM): complete, rewind
            for cand in (pc - 1, pc):
                pa = self.translate(cand)
                if pa is not None and pa in self._patched:
                    break
            else:
                return False
            pc = cand
            m.vcpu.immediate_exit = 1               # finish the port write (no device sees it)
            try:
                m.vcpu.run()
            finally:
                m.vcpu.immediate_exit = 0
            regs = m.vcpu.get_regs()
            regs.rip = pc
            m.vcpu.set_regs(regs)
            return self._hit(pa, pc, regs)
        if exc == 258:                              # PVM: emulation failure on our int3
            pa = self.translate(pc)
            if pa is None or pa not in self._patched:
                return False
            regs = m.vcpu.get_regs()
            if pc == self._vec3_trap and self._user_trap(regs):
                return True
            if self._rearm and pc in self._rearm_at:
                self._rearm_user()
            return self._hit(pa, pc, regs)
        if exc in (3, 256):                         # int3 (VMX) / hlt (EXC_HLT)
            pa = self.translate(pc)
            if pa is None or pa not in self._patched:
                return False
            regs = m.vcpu.get_regs()
            if regs.rip != pc:
                regs.rip = pc
                m.vcpu.set_regs(regs)
            return self._hit(pa, pc, regs)
        if exc == 1:
            if dr6 & 0xF and self._hw_list():           # a debug-register breakpoint
                regs = m.vcpu.get_regs()
                hits = [b for b in self.bps.values() if b.method == "dr" and b.va == regs.rip]
                if hits and self._stepover_pa is None and not self._hw_off:
                    return self._hit(None, regs.rip, regs, hits)
            return self._after_step()
        return False

    # ------------------------------------------------------------ ring 3 on PVM
    # A user int3 traps through the guest IDT (no exit); an internal breakpoint on the kernel's
    # `vec3_trap` sees it first.  If the interrupted rip-1 is one of our user breakpoints, the
    # exception is undone: rip/rsp/rflags from the frame, user CS/SS, and the vCPU stops in
    # ring 3 at the breakpoint.  Ring-3 single steps go to the guest on PVM, so continuing
    # removes the patch and re-arms it at the next kernel entry (syscall, exception, tick).
    _vec3_trap = None

    def _user_hooks_on(self):
        syms = getattr(self.m.boot, "symbols", {})
        if self._vec3_trap is None and "vec3_trap" in syms:
            self._vec3_trap = syms["vec3_trap"]
            self.add_breakpoint(self._vec3_trap, owner="user-bp", callback=lambda *a: None)
            self._rearm_at = {syms[n] for n in ("syscall_common", "exc_common", "vec_timer")
                              if n in syms}

    def _leaves_ring0(self, pa: int) -> bool:
        code = self.original_bytes(pa, bytes(self.m.mem.read(pa, 3)))
        return code[:2] in (b"\x0f\x07", b"\x48\xcf") or code[:3] == b"\x48\x0f\x07" or code[:1] == b"\xcf"

    def _user_trap(self, regs) -> bool:
        import struct as _s
        frame = self.read_virt(regs.rsp, 40)
        if not frame or len(frame) < 40:
            return False
        rip, cs, rflags, rsp, ss = _s.unpack("<5Q", frame)
        if cs & 3 != 3:
            return False
        pa = self.translate(rip - 1)
        bps = [b for b in self.bps.values() if b.owner is None and b.enabled and b.pa == pa
               and b.va is not None and b.va < abi.USER_TOP] if pa in self._patched else []
        if not bps:
            return False
        v = self.m.vcpu
        regs.rip, regs.rflags, regs.rsp = rip - 1, rflags, rsp
        v.set_regs(regs)
        sr = v.get_sregs()
        for seg, sel, typ, l, db in ((sr.cs, cs, 0xB, 1, 0), (sr.ss, ss, 0x3, 0, 1)):
            seg.base, seg.limit, seg.selector, seg.type, seg.present, seg.dpl = 0, 0xFFFFFFFF, sel, typ, 1, 3
            seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable = db, 1, l, 1, 0, 0
        v.set_sregs(sr)
        for b in bps:
            b.hits += 1
        self._mode = "cont"
        self.m.request_pause()
        self._apply_debug(False)
        self.focus = self.vcpu()
        self._pending_stop = StopEvent("breakpoint", rip - 1, bps[0].id)
        return True

    def _rearm_user(self):
        pas, self._rearm = self._rearm, set()
        for pa in pas:
            self._sync(pa)
        for b in [b for b in self.bps.values()
                  if b.owner == "user-bp" and b.va in self._rearm_at]:
            self.bps.pop(b.id)
            if b.pa != self._stepover_pa:
                self._sync(b.pa)

    def _hit(self, pa, pc, regs, bps=None) -> bool:
        bps = bps if bps is not None else [b for b in self.bps.values()
                                           if b.pa == pa and b.enabled and b.method != "dr"]
        visible = []
        for b in bps:
            b.hits += 1
            if b.owner is not None:
                try:
                    b.callback(self, b, regs)
                except Exception:
                    pass
            else:
                visible.append(b)
        if self._mode == "step" and not visible:
            pass
        if visible:
            for b in visible:
                if b.kind == "tbreak":
                    self.bps.pop(b.id, None)
                    self._sync(b.pa)
            self._mode = "cont"
            self.m.request_pause()
            self._apply_debug(False)
            self.focus = self.vcpu()
            self._pending_stop = StopEvent("breakpoint", pc, visible[0].id)
            return True
        # Internal only: step over it and keep going (or keep stepping).
        if pa is not None:
            self._remove(pa)
            self._stepover_pa = pa
        self._apply_debug(True)
        return True

    def _after_step(self) -> bool:
        stepped_over = self._stepover_pa is not None or self._hw_off
        if self._stepover_pa is not None:
            pa, self._stepover_pa = self._stepover_pa, None
            self._sync(pa)
        self._hw_off = False
        if self._mode == "step":
            self._steps_left -= 1
            regs = self.m.vcpu.get_regs()
            if self._steps_left <= 0:
                self._mode = "cont"
                self._apply_debug(False)
                self.m.request_pause()
                self.focus = self.vcpu()
                self._pending_stop = StopEvent("step", regs.rip)
                return True
            pa = self.translate(regs.rip)
            if self.pvm and pa is not None and self._leaves_ring0(pa):
                self._mode = "cont"             # the next step would go to ring 3: stop here
                self._apply_debug(False)
                self.m.request_pause()
                self._pending_stop = StopEvent("step", regs.rip)
                return True
            if pa is not None and pa in self._patched:
                self._remove(pa)
                self._stepover_pa = pa
            self._apply_debug(True)
            return True
        if stepped_over:
            self._apply_debug(False)
            return True
        return False

    # ------------------------------------------------------------ memory
    def read_virt(self, va: int, n: int, cr3: int | None = None) -> bytes | None:
        cr3 = self.cr3() if cr3 is None else cr3
        out = bytearray()
        while n > 0:
            pa = self.translate(va, cr3)
            k = min(n, abi.PAGE - (va & 0xFFF))
            if pa is None or not self.m.mem.contains(pa, k):
                return None if not out else bytes(out)
            out += self.original_bytes(pa, bytes(self.m.mem.read(pa, k)))
            va += k
            n -= k
        return bytes(out)

    def read_phys(self, pa: int, n: int) -> bytes:
        return self.original_bytes(pa, bytes(self.m.mem.read(pa, n)))

    def write_phys(self, pa: int, data: bytes):
        data = bytearray(data)
        for i in range(len(data)):             # keep our patches, update what they hide
            p = pa + i
            if p in self._patched:
                self._patched[p] = data[i]
                data[i] = self.patch
        self.m.mem.write(pa, bytes(data))

    def write_virt(self, va: int, data: bytes, cr3: int | None = None) -> bool:
        cr3 = self.cr3() if cr3 is None else cr3
        off = 0
        while off < len(data):
            pa = self.translate(va + off, cr3)
            k = min(len(data) - off, abi.PAGE - ((va + off) & 0xFFF))
            if pa is None:
                return False
            self.write_phys(pa, data[off:off + k])
            off += k
        return True

    def detach(self):
        with self._lock:
            for b in [b for b in self.bps.values() if b.owner is None]:
                self.bps.pop(b.id)
                self._sync(b.pa)
            self._apply_debug(False)
