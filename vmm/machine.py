"""The machine: one VM, its RAM, its devices, its vCPU and the run loop.

    m = Machine(boot, console=ConsoleIO(...))   # boot: bootimage.BootState
    status = m.run()                             # exit status
    m.stats  -> {'exits': {'MMIO': 3, ...}, 'boot_to_prompt_ms': ..., ...}

The VMM core knows nothing about the CLI or the terminal: output and input go
through the ConsoleIO given to it.

Exit statuses other than the guest's own (PLAT_EXIT):
    STATUS_PANIC 101        kernel panic (out PANIC_PORT)
    STATUS_TRIPLE_FAULT 102 KVM_EXIT_SHUTDOWN
    STATUS_HALTED 103       hlt with nothing to wake the vCPU
    STATUS_VMM_ERROR 104    entry failure, emulation failure, unexpected exit
    STATUS_TIMEOUT 124      run(timeout=...) expired
    STATUS_QUIT 130         Ctrl-C / Ctrl-A x;  STATUS_TERM 143 SIGTERM
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from vmm import abi
from vmm.dump import CpuSnapshot, Symbols, dump_state, panic_dump
from vmm.kvm import DEFAULT_PATH, Kvm, KvmError, ffi, lib, exit_name
from vmm.memory import GuestMemory
from vmm.vcpu import install_kick_handler, kick, setup_boot_vcpu, snapshot
from devices.base import device_thread
from devices.console import Console, ConsoleIO
from devices.platform import Platform


# Pseudo exception number given to debug handlers for a `hlt` exit (pc = the hlt).
EXC_HLT = 256
# ... and for a one-byte port write (`out dx, al`; pc = rip at the exit, which is the
# instruction on VMX and the one after it on PVM).
EXC_OUT = 257
# ... and for an emulation failure at pc (PVM emulates ring 0 and cannot emulate `int3`: a
# debugger's int3 in kernel code exits this way, nothing executed, state intact).
EXC_EMUL = 258


class MachineError(Exception):
    """The machine cannot be built as asked (one-line message)."""


INTERNAL_SUBERRORS = {1: "emulation failure", 2: "double fault while delivering an exception",
                      3: "failed to deliver an event", 4: "unexpected exit reason from hardware"}
SYSTEM_EVENTS = {1: "shutdown", 2: "reset", 3: "crash"}


class Machine:
    STATUS_PANIC = 101
    STATUS_TRIPLE_FAULT = 102
    STATUS_HALTED = 103
    STATUS_VMM_ERROR = 104
    STATUS_TIMEOUT = 124
    STATUS_QUIT = 130
    STATUS_TERM = 143

    def __init__(self, boot, console: ConsoleIO | None = None, cpus: int = 1,
                 kvm_path: str = DEFAULT_PATH, devices=(), log=None, t_start: float | None = None):
        t_init = time.perf_counter()
        self.t_start = t_start if t_start is not None else t_init     # "VMM start"
        boot_cpus = getattr(boot, "cpus", None) or [boot.cpu]
        if not 1 <= cpus <= len(boot_cpus):
            raise MachineError(f"--cpus {cpus}: the boot state describes {len(boot_cpus)} "
                               f"CPU(s) (between 1 and {abi.MAX_CPUS})")
        self.ncpus = cpus
        self._tls = threading.local()   # which vCPU this thread runs (exit handlers)
        self.vcpus: list = []
        self._ap_threads: list = []
        ram = boot.ram_bytes
        if ram % abi.PAGE or not abi.MIN_RAM <= ram <= abi.MAX_RAM:
            raise MachineError(f"guest RAM {ram:#x} must be a multiple of 4 KiB between "
                               f"{abi.MIN_RAM >> 20} MiB and {abi.MAX_RAM >> 20} MiB")
        self.boot = boot
        self.log = log if log is not None else sys.stderr
        self.symbols = Symbols(getattr(boot, "symbols", None) or {})
        self.stats: dict = {"exits": {}}
        self.exit_counts: dict[str, int] = self.stats["exits"]
        self.last_dump = ""
        self.stop_reason = ""
        self.t_first_run = 0.0
        self.debug_hook = None          # callable(machine) -> bool (True: keep running)
        # Guest debugging is shared (debugger, syscall trace, instruction counter): each user
        # asks through set_debug(owner, ...) and gets KVM_EXIT_DEBUG through debug_handlers,
        # callables(machine, exception, pc, dr6) -> True if the exit was theirs.
        self.debug_handlers: list = []
        self._debug_owners: dict[str, tuple[bool, bool]] = {}
        self._debug_control = 0
        self._debug_control_key = (0, (0,) * 8)
        self._debug_keys: dict[int, tuple] = {}         # per vCPU: what KVM was last told
        self.device_exits: dict[str, int] = {}
        self.vcpu_exits: dict[int, dict[str, int]] = {}     # vCPU index -> exit name -> count
        self.stats["device_exits"] = self.device_exits
        self._pause_req = False
        self._parked_n = 0
        self._jobs: dict[int, object] = {}     # vCPU index -> callable run by its parked thread
        self._paused = threading.Event()
        self._run_cond = threading.Condition()
        self._in_loop = False
        self.on_park = None             # callable(machine) when the vCPU parks (debugger)
        self._stop_status: int | None = None
        self._stop_lock = threading.Lock()
        self._mmio: dict[int, object] = {}
        self._eventfds: list[tuple[int, int, int]] = []
        self._irqfds: dict[int, int] = {}
        self._extra_slots: list = []
        self._started = False
        self.kvm = self.vm = self.vcpu = self.mem = None
        install_kick_handler()          # no-op unless on the main thread
        try:
            self._build(kvm_path, console, devices)
        except BaseException:
            self.close()
            raise
        self.stats["create_ms"] = (time.perf_counter() - t_init) * 1000.0

    # ------------------------------------------------------------------ build
    def _build(self, kvm_path, console, devices):
        boot = self.boot
        self.kvm = Kvm(kvm_path)
        self.vm = self.kvm.create_vm()
        for fn in (self.vm.set_tss_addr, self.vm.set_identity_map_addr):
            try:                        # needed for real mode on VMX; harmless elsewhere
                fn()
            except KvmError:
                pass
        self.ram_bytes = boot.ram_bytes
        self.mem = GuestMemory(boot.ram_bytes)
        self.vm.set_user_memory_region(0, 0, boot.ram_bytes, self.mem.host_addr)
        for gpa, data in boot.writes:
            self.mem.write(gpa, data)
        self.console = Console(console if console is not None else ConsoleIO())
        self.platform = Platform()
        self.devices = [self.console, self.platform, *devices]
        for d in self.devices:
            d.attach(self)
        # The in-kernel local APIC gives each CPU its tick and the TLB-shootdown
        # IPIs (x2APIC); it must exist before the vCPUs.
        if getattr(boot, "irqchip", False) or getattr(boot.bootinfo, "timer_count", 0) \
                or self.ncpus > 1:
            self.vm.create_irqchip()
            self._route_device_irqs()
        cpus = getattr(boot, "cpus", None) or [boot.cpu]
        for i in range(self.ncpus):
            v = self.vm.create_vcpu(i)
            v.index = i
            setup_boot_vcpu(self.kvm, v, cpus[i])
            if i:
                v.set_runnable()
            self.vcpus.append(v)
        self._dispatch = {
            lib.KVM_EXIT_IO: self._exit_io,
            lib.KVM_EXIT_MMIO: self._exit_mmio,
            lib.KVM_EXIT_INTR: self._exit_intr,
            lib.KVM_EXIT_HLT: self._exit_hlt,
            lib.KVM_EXIT_SHUTDOWN: self._exit_shutdown,
            lib.KVM_EXIT_FAIL_ENTRY: self._exit_fail_entry,
            lib.KVM_EXIT_INTERNAL_ERROR: self._exit_internal,
            lib.KVM_EXIT_DEBUG: self._exit_debug,
            lib.KVM_EXIT_SYSTEM_EVENT: self._exit_system_event,
        }

    def _route_device_irqs(self):
        """Device page i interrupts through GSI DEV_GSI + i: an MSI with vector
        DEV_VECTOR + i, broadcast to every CPU (whoever waits for the device may
        be halted on any of them), raised by writing an eventfd (irqfd): no exit."""
        routes = [(abi.DEV_GSI + i, 0xFEE00000 | (0xFF << 12), abi.DEV_VECTOR + i)
                  for i in range(abi.DEV_PAGES)]
        self.vm.set_msi_routes(routes)
        for i in range(abi.DEV_PAGES):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.vm.irqfd(fd, abi.DEV_GSI + i)
            self._irqfds[i] = fd

    def raise_irq(self, index: int) -> bool:
        """Interrupt the guest for device page `index` (from any thread)."""
        fd = self._irqfds.get(index)
        if fd is None:
            return False
        try:
            os.eventfd_write(fd, 1)
        except OSError:
            return False
        return True

    # ------------------------------------------------- device registration API
    def device_page_gpa(self, index: int) -> int:
        if not 0 <= index < abi.DEV_PAGES:
            raise MachineError(f"device page {index} outside the device area (0..{abi.DEV_PAGES - 1})")
        return self.ram_bytes + index * abi.PAGE

    def register_mmio(self, index: int, device) -> None:
        self.device_page_gpa(index)
        if index in self._mmio:
            raise MachineError(f"device page {index} claimed by both {self._mmio[index].name} "
                               f"and {device.name}")
        self._mmio[index] = device

    def add_ioeventfd(self, gpa: int, length: int | None = None) -> int | None:
        """An eventfd signalled by guest writes at gpa (no exit); None if unsupported."""
        if not self.vm.check_extension(lib.KVM_CAP_IOEVENTFD):
            return None
        if length is None:
            length = 0 if self.vm.check_extension(lib.KVM_CAP_IOEVENTFD_ANY_LENGTH) else 4
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self.vm.ioeventfd(gpa, length, fd)
        except KvmError:
            os.close(fd)
            return None
        self._eventfds.append((gpa, length, fd))
        return fd

    def ram_device_page(self, index: int) -> memoryview:
        """Back device page `index` with a page of host RAM (its own KVM slot)."""
        import mmap
        gpa = self.device_page_gpa(index)
        m = mmap.mmap(-1, abi.PAGE)
        c = ffi.from_buffer(m)
        self.vm.set_user_memory_region(1 + index, gpa, abi.PAGE, int(ffi.cast("unsigned long", c)))
        self._extra_slots.append((m, c))
        return memoryview(m)

    @staticmethod
    def mfence() -> None:
        lib.xomb_mfence()

    # ------------------------------------------------------------------ control
    def request_stop(self, status: int, reason: str = "", guest: bool = False) -> None:
        """Stop the VM (from any thread); run() returns status. First request wins."""
        with self._stop_lock:
            if self._stop_status is not None:
                return
            self._stop_status = status
            self.stop_reason = reason
        for v in list(self.vcpus):
            kick(v)             # immediate_exit (+ a signal if from another thread)
        with self._run_cond:        # a parked vCPU wakes up to stop
            self._run_cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stop_status is not None

    @property
    def vcpu(self):
        """The vCPU of the calling vCPU thread (exit handlers), else the boot vCPU."""
        v = getattr(self._tls, "vcpu", None)
        return v if v is not None else (self.vcpus[0] if self.vcpus else None)

    @vcpu.setter
    def vcpu(self, value):
        if value is None:
            self.vcpus = []
        elif self.vcpus:
            self.vcpus[0] = value
        else:
            self.vcpus = [value]

    # ------------------------------------------------ guest debug and pausing
    def set_debug(self, owner: str, singlestep: bool = False, sw_breakpoints: bool = False,
                  hw_breakpoints=(), vcpu=None) -> None:
        """Ask for single-step, software-breakpoint and hardware-breakpoint (DR0..3 execute
        addresses) exits on behalf of `owner`; the vCPU gets the union of every owner's
        request (KVM_SET_GUEST_DEBUG).  Call from the vCPU thread or while the vCPU is paused
        (or before run).  set_debug(owner) withdraws.  Exits arrive at debug_handlers."""
        hw_breakpoints = tuple(hw_breakpoints)
        if singlestep or sw_breakpoints or hw_breakpoints:
            self._debug_owners[owner] = (singlestep, sw_breakpoints, hw_breakpoints)
        else:
            self._debug_owners.pop(owner, None)
        ss = any(o[0] for o in self._debug_owners.values())
        bp = any(o[1] for o in self._debug_owners.values())
        hw = [a for o in self._debug_owners.values() for a in o[2]][:4]
        control = 0
        dr = [0] * 8
        if ss or bp or hw:
            control = lib.KVM_GUESTDBG_ENABLE
            if ss:
                control |= lib.KVM_GUESTDBG_SINGLESTEP
            if bp:
                control |= lib.KVM_GUESTDBG_USE_SW_BP
            if hw:
                control |= lib.KVM_GUESTDBG_USE_HW_BP
                for i, a in enumerate(hw):
                    dr[i] = a
                    dr[7] |= 1 << (2 * i)       # Li, execute, length 1
        key = (control, tuple(dr))
        v = vcpu if vcpu is not None else self.vcpu     # default: the calling vCPU thread's
        if v is not None and self._debug_keys.get(id(v), self._debug_control_key) != key:
            v.set_guest_debug(control, dr)
            self._debug_keys[id(v)] = key
        self._debug_control = control

    def reinject_exception(self, vector: int) -> None:
        """Deliver a #BP/#DB that KVM intercepted for the debugger to the guest, as if
        no debugger were attached (KVM_SET_VCPU_EVENTS; rip still at the int3)."""
        ev = self.vcpu.get_vcpu_events()
        ev.exception.injected = 1
        ev.exception.nr = vector
        ev.exception.has_error_code = 0
        ev.exception.pending = 0
        ev.exception.error_code = 0
        ev.flags = 0
        self.vcpu.set_vcpu_events(ev)

    def pause(self, timeout: float = 5.0) -> bool:
        """Stop the vCPU (from another thread) and wait until it is parked, with any
        pending I/O completed, so its registers can be read and written."""
        if not self._in_loop:
            return self._paused.is_set() or not self._started
        self._pause_req = True
        if not self._paused.is_set():
            for v in list(self.vcpus):
                kick(v)
        return self._paused.wait(timeout)

    def request_pause(self) -> None:
        """From a vCPU thread (a debug handler): park after this exit; the other vCPUs
        are kicked so that every vCPU stops."""
        self._pause_req = True
        me = threading.get_ident()
        for v in list(self.vcpus):
            if v.thread_ident != me:
                kick(v)

    def resume(self, timeout: float = 5.0) -> bool:
        """Let a paused vCPU run again; waits until it has left the park."""
        with self._run_cond:
            self._pause_req = False
            self._run_cond.notify_all()
            if threading.get_ident() == getattr(self.vcpu, "thread_ident", None):
                return True
            return self._run_cond.wait_for(lambda: not self._paused.is_set(), timeout)

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def run_parked(self, vcpu, fn, timeout: float = 5.0):
        """While paused: run fn() on `vcpu`'s own thread and return its result.  KVM
        wants a vCPU driven from one thread (a KVM_RUN from another thread costs an RCU
        grace period, twice); vmm/upgrade.py runs the new kernel's self-test this way."""
        if not self.paused:
            raise MachineError("run_parked: the machine is not paused")
        box: dict = {}
        done = threading.Event()

        def job():
            try:
                box["result"] = fn()
            except BaseException as exc:        # re-raised in the caller
                box["error"] = exc
            finally:
                done.set()
        with self._run_cond:
            self._jobs[vcpu.index] = job
            self._run_cond.notify_all()
        if not done.wait(timeout):
            with self._run_cond:
                self._jobs.pop(vcpu.index, None)
            raise MachineError(f"vCPU {vcpu.index} did not run the job in {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _park(self):
        """Park this vCPU; when every vCPU is parked the machine is paused."""
        me = getattr(self._tls, "vcpu", None)
        with self._run_cond:
            self._parked_n += 1
            last = self._parked_n >= len(self.vcpus)
        if last:
            self._paused.set()
            if self.on_park is not None:
                try:
                    self.on_park(self)
                except Exception:
                    pass
        with self._run_cond:
            while self._pause_req and self._stop_status is None:
                job = self._jobs.pop(me.index, None) if me is not None and self._jobs else None
                if job is None:
                    self._run_cond.wait(0.5)
                    continue
                self._run_cond.release()    # run_parked: this vCPU's own thread runs it
                try:
                    job()
                finally:
                    self._run_cond.acquire()
            self._parked_n -= 1
            self._paused.clear()
            self._run_cond.notify_all()

    def snapshot(self) -> CpuSnapshot:
        return snapshot(self.vcpu)

    def dump(self, title: str, extra: list[str] | None = None) -> str:
        text = dump_state(title, self.snapshot(), self.mem, self.symbols, extra)
        self._emit(text)
        return text

    def _emit(self, text: str):
        self.last_dump = text
        try:
            self.log.write(text)
            self.log.flush()
        except (OSError, ValueError):
            pass

    def _fail(self, status: int, title: str, extra: list[str] | None = None):
        self.dump(title, extra)
        self.request_stop(status, title)

    # ------------------------------------------------------------------ run
    def run(self, timeout: float | None = None) -> int:
        """Run until the guest powers off, crashes, or is interrupted. Returns the status."""
        if self._started:
            raise MachineError("a machine runs once")
        self._started = True
        old = {}
        if threading.current_thread() is threading.main_thread():
            install_kick_handler()
            for sig, st in ((signal.SIGINT, self.STATUS_QUIT), (signal.SIGTERM, self.STATUS_TERM)):
                old[sig] = signal.signal(sig, lambda n, f, st=st: self.request_stop(
                    st, f"interrupted by {signal.Signals(n).name}"))
        self.vcpu.thread_ident = threading.get_ident()
        timer = None
        if timeout is not None:
            done = threading.Event()

            def expire():
                if not done.wait(timeout):
                    self.request_stop(self.STATUS_TIMEOUT, f"timeout after {timeout} s")
            timer = device_thread(expire, "run-timeout")
            timer.start()
        try:
            for d in self.devices:
                d.start()
            for v in self.vcpus[1:]:    # one thread per vCPU; the boot vCPU runs here
                t = threading.Thread(target=self._loop, args=(v,), daemon=True,
                                     name=f"vcpu{v.index}")
                self._ap_threads.append(t)
                t.start()
            self._loop(self.vcpus[0])
        finally:
            if timer is not None:
                done.set()
            for t in self._ap_threads:
                t.join(timeout=5)
            for d in reversed(self.devices):
                try:
                    d.stop()
                except Exception as exc:          # never lose the status over a device
                    self._emit(f"xomb-vmm: device {d.name} failed to stop: {exc}\n")
            for sig, h in old.items():
                signal.signal(sig, h)
        self.stats["run_ms"] = (time.perf_counter() - self.t_first_run) * 1000.0
        self.stats["console"] = dict(self.console.stats)
        return self._stop_status

    def _loop(self, vcpu=None):
        vcpu = vcpu or self.vcpus[0]
        self._tls.vcpu = vcpu
        vcpu.thread_ident = threading.get_ident()
        if vcpu is not self.vcpus[0]:
            return self._loop_ap(vcpu)
        counts = self.exit_counts
        dispatch = self._dispatch
        names = {}
        self.t_first_run = time.perf_counter()
        first = True
        reason = None
        self._in_loop = True
        vcounts = self.vcpu_exits.setdefault(vcpu.index, {})     # per-vCPU exit counts
        while self._stop_status is None:
            if self._pause_req:
                if reason in (lib.KVM_EXIT_INTR, lib.KVM_EXIT_DEBUG):
                    self._park()            # state consistent: no I/O half done
                    reason = None
                    continue
                vcpu.immediate_exit = 1     # complete pending I/O, then park
            try:
                reason = vcpu.run()
            except KvmError as exc:
                self._fail(self.STATUS_VMM_ERROR, f"KVM_RUN failed: {exc}")
                break
            if first:
                self.stats["first_exit_us"] = (time.perf_counter() - self.t_first_run) * 1e6
                first = False
            name = names.get(reason)
            if name is None:
                name = names[reason] = exit_name(reason)
            counts[name] = counts.get(name, 0) + 1
            vcounts[name] = vcounts.get(name, 0) + 1
            try:
                dispatch.get(reason, self._exit_unexpected)(reason)
            except Exception as exc:        # a VMM/device bug: stop with a dump, never hang
                import traceback
                self._emit(traceback.format_exc())
                self._fail(self.STATUS_VMM_ERROR,
                           f"VMM error while handling a {name} exit: {type(exc).__name__}: {exc}")
        self._in_loop = False
        if self._stop_status in (self.STATUS_TIMEOUT,):
            self.dump(self.stop_reason)

    def _loop_ap(self, vcpu):
        """An application processor: the same exits and pausing, no first-exit stats."""
        counts, dispatch = self.exit_counts, self._dispatch
        vcounts = self.vcpu_exits.setdefault(vcpu.index, {})
        reason = None
        while self._stop_status is None:
            if self._pause_req:             # pause every vCPU (console, debugger)
                if reason in (lib.KVM_EXIT_INTR, lib.KVM_EXIT_DEBUG):
                    self._park()
                    reason = None
                    continue
                vcpu.immediate_exit = 1
            try:
                reason = vcpu.run()
            except KvmError as exc:
                self._fail(self.STATUS_VMM_ERROR, f"KVM_RUN failed on vCPU {vcpu.index}: {exc}")
                break
            name = exit_name(reason)
            with self._stop_lock:
                counts[name] = counts.get(name, 0) + 1
            vcounts[name] = vcounts.get(name, 0) + 1
            try:
                dispatch.get(reason, self._exit_unexpected)(reason)
            except Exception as exc:
                import traceback
                self._emit(traceback.format_exc())
                self._fail(self.STATUS_VMM_ERROR, f"VMM error on vCPU {vcpu.index} handling "
                           f"a {name} exit: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ exits
    def _exit_intr(self, reason):
        self.vcpu.immediate_exit = 0

    def _exit_io(self, reason):
        io = self.vcpu.io
        if self.debug_handlers and io.direction == lib.KVM_EXIT_IO_OUT and io.size == 1:
            rip = self.vcpu.get_regs().rip     # a debugger's `out dx, al` breakpoint (PVM)
            for h in list(self.debug_handlers):
                if h(self, EXC_OUT, rip, 0):
                    return
        port, out = io.port, io.direction == lib.KVM_EXIT_IO_OUT
        data = self.vcpu.io_data()
        if port == abi.PANIC_PORT and out:
            vector = bytes(data)[0]
            text = panic_dump(self.snapshot(), vector, self.mem, self.symbols)
            self._emit(text)
            self.request_stop(self.STATUS_PANIC, f"kernel panic: vector {vector}")
        elif abi.COM1 <= port < abi.COM1 + 8:      # kernel debug output (QEMU path), tolerated
            if out and port == abi.COM1:
                self.console.io.output.write(bytes(data))
            elif not out:
                data[:] = bytes([0x60 if port == abi.COM1 + 5 else 0]) * len(data)
        else:
            self._fail(self.STATUS_VMM_ERROR,
                       f"unexpected port I/O: {'out' if out else 'in'} port {port:#x} size {io.size}")

    def _exit_mmio(self, reason):
        m = self.vcpu.mmio
        addr, n, write = m.phys_addr, m.len, m.is_write
        page, off = divmod(addr - self.ram_bytes, abi.PAGE)
        dev = self._mmio.get(page) if addr >= self.ram_bytes else None
        if dev is not None:
            self.device_exits[dev.name] = self.device_exits.get(dev.name, 0) + 1
        if dev is None:
            what = "write to" if write else "read from"
            self._fail(self.STATUS_VMM_ERROR, f"MMIO {what} unmapped guest-physical "
                       f"address {addr:#x} ({n} bytes): no RAM or device there")
            return
        if write:
            dev.mmio_write(page, off, bytes(ffi.buffer(m.data, n)))
        else:
            data = dev.mmio_read(page, off, n)
            ffi.buffer(m.data, n)[:] = bytes(data[:n]).ljust(n, b"\0")

    def _exit_hlt(self, reason):
        if self.debug_handlers:         # a debugger's `hlt` breakpoint (PVM: int3 is not emulated)
            pc = self.vcpu.get_regs().rip - 1
            for h in list(self.debug_handlers):
                if h(self, EXC_HLT, pc, 0):
                    return
        self._fail(self.STATUS_HALTED, "guest halted (hlt with no interrupt source)")

    def _exit_shutdown(self, reason):
        self._fail(self.STATUS_TRIPLE_FAULT,
                   "triple fault (KVM_EXIT_SHUTDOWN): an exception while delivering a double fault")

    def _exit_fail_entry(self, reason):
        f = self.vcpu.fail_entry
        self._fail(self.STATUS_VMM_ERROR, "VM entry failed (KVM_EXIT_FAIL_ENTRY)",
                   [f"hardware entry failure reason {f.hardware_entry_failure_reason:#x} "
                    f"on cpu {f.cpu}"])

    def _exit_internal(self, reason):
        e = self.vcpu.internal
        if self.debug_handlers and e.suberror == 1:   # PVM: the emulator refuses a patched int3
            pc = self.vcpu.get_regs().rip
            for h in list(self.debug_handlers):
                if h(self, EXC_EMUL, pc, 0):
                    return
        sub = INTERNAL_SUBERRORS.get(e.suberror, f"suberror {e.suberror}")
        data = " ".join(f"{e.data[i]:#x}" for i in range(min(e.ndata, 16)))
        self._fail(self.STATUS_VMM_ERROR, f"KVM internal error: {sub}",
                   [f"suberror {e.suberror}, data [{data}]"])

    def _exit_debug(self, reason):
        d = self.vcpu.debug.arch
        for h in list(self.debug_handlers):
            if h(self, d.exception, d.pc, d.dr6):
                return
        if self.debug_hook is not None and self.debug_hook(self):
            return
        if d.exception == 3 and self._debug_control & lib.KVM_GUESTDBG_USE_SW_BP:
            self.reinject_exception(3)      # the guest's own int3 (PVM syscall gate...)
            return
        if d.exception == 1 and self._debug_control & lib.KVM_GUESTDBG_SINGLESTEP:
            return                          # a step nobody claimed: keep running
        self._fail(self.STATUS_VMM_ERROR, "debug exit (no debugger attached)",
                   [f"exception {d.exception} pc {d.pc:#x} dr6 {d.dr6:#x} dr7 {d.dr7:#x}"])

    def _exit_system_event(self, reason):
        t = self.vcpu.system_event.type
        if t == 1:
            self.request_stop(0, "guest shutdown (system event)")
        else:
            self._fail(self.STATUS_VMM_ERROR,
                       f"system event: {SYSTEM_EVENTS.get(t, t)} (KVM_EXIT_SYSTEM_EVENT)")

    def _exit_unexpected(self, reason):
        self._fail(self.STATUS_VMM_ERROR, f"unexpected VM exit {exit_name(reason)} ({reason})")

    # ------------------------------------------------------------------ teardown
    def close(self):
        if self.vm is not None:
            self.vm.close()             # drops the ioeventfds too (a deassign costs ~5 ms)
            for fd in self._irqfds.values():
                os.close(fd)
            self._irqfds.clear()
            for gpa, length, fd in self._eventfds:
                os.close(fd)
            self._eventfds.clear()
            self.vm = None
            self.vcpu = None
        for m, c in self._extra_slots:
            ffi.release(c)
            try:
                m.close()
            except BufferError:         # a device still holds a view: the GC unmaps it
                pass
        self._extra_slots.clear()
        if self.mem is not None:
            self.mem.close()
            self.mem = None
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
