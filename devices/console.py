"""The console: two byte rings in guest RAM and an ioeventfd doorbell.

Layout (vmm/abi.py): each ring is one page of guest RAM,

    +RING_HEAD     u32  consumer index (free-running, mod 2**32)
    +RING_TAIL     u32  producer index
    +RING_WAITING  u32  1 = the consumer is asleep: ring the doorbell
    +RING_DATA     RING_SIZE bytes, byte i at RING_DATA + (i % RING_SIZE)

The out ring (guest -> host) is page `bootinfo.console_out_pfn`, the in ring
(host -> guest) page `bootinfo.console_in_pfn`.

**The "no VM exit per character" rule.**  The guest (producer of the out ring)
writes its bytes, then publishes them by storing `tail`, then (after a full
fence) reads `waiting`; only if `waiting` is non-zero does it write to the
doorbell page (`ram_bytes + DEV_CONSOLE_DOORBELL*4096`, any value).  The
doorbell write is absorbed in the kernel by an ioeventfd, so even then it never
exits to the VMM: the host thread is simply woken.  While the host is awake
(draining) `waiting` is 0 and the guest just writes bytes into memory.

The host consumer loop: drain (copy [head, tail), store head), set waiting=1,
fence, re-check tail (the guest may have published between the drain and the
flag: no lost wake-up), then sleep on the eventfd with a 50 ms fallback timeout,
clear waiting when awake.  A final drain runs when the machine stops, so output
written just before a power-off is never lost.

The guest never blocks on a full out ring without ringing: if the ring is full
it rings (when waiting) and polls `head`.

Input: a host thread reads the input source and appends to the in ring; the
guest polls it (no interrupts).  If the in ring is full the host waits.

Output sinks and input sources are pluggable (ConsoleIO): a terminal, a pipe or
memory (tests).  A source may raise ConsoleQuit (the terminal's Ctrl-A x).
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time

from vmm import abi
from devices.base import Device, device_thread

MASK32 = 0xFFFF_FFFF
_U32 = struct.Struct("<I")


class ConsoleQuit(Exception):
    """Raised by an input source when the user asks to quit (Ctrl-A x)."""


# --------------------------------------------------------------------------
# Ring arithmetic (pure)
# --------------------------------------------------------------------------
def ring_used(head: int, tail: int) -> int:
    """Bytes in the ring between free-running u32 indices."""
    return (tail - head) & MASK32


def ring_segments(index: int, n: int, size: int = abi.RING_SIZE) -> list[tuple[int, int]]:
    """The (offset, length) pieces of the data area covering n bytes from index."""
    start = index % size
    first = min(n, size - start)
    segs = [(start, first)] if first else []
    if n > first:
        segs.append((0, n - first))
    return segs


class Ring:
    """One console ring over a page of guest memory (any writable buffer)."""

    def __init__(self, page, size: int = abi.RING_SIZE):
        self.page = memoryview(page)
        self.data = self.page[abi.RING_DATA:abi.RING_DATA + size]
        self.size = size
        self.errors = 0

    def _get(self, off):
        return _U32.unpack_from(self.page, off)[0]

    def _set(self, off, v):
        # not pack_into: CPython zeroes the destination before packing, and the guest
        # reads these indices concurrently (a transient 0 would be a bogus index)
        self.page[off:off + 4] = _U32.pack(v & MASK32)

    head = property(lambda s: s._get(abi.RING_HEAD), lambda s, v: s._set(abi.RING_HEAD, v))
    tail = property(lambda s: s._get(abi.RING_TAIL), lambda s, v: s._set(abi.RING_TAIL, v))
    waiting = property(lambda s: s._get(abi.RING_WAITING), lambda s, v: s._set(abi.RING_WAITING, v))

    def used(self) -> int:
        return ring_used(self.head, self.tail)

    def free(self) -> int:
        return self.size - min(self.used(), self.size)

    def consume(self) -> bytes:
        """Consumer side: take everything published, advance head."""
        head, tail = self.head, self.tail
        n = ring_used(head, tail)
        if n == 0:
            return b""
        if n > self.size:          # producer bug: skip the garbage, resynchronise
            self.errors += 1
            self.head = tail
            return b""
        out = b"".join(bytes(self.data[o:o + k]) for o, k in ring_segments(head, n, self.size))
        self.head = head + n
        return out

    def produce(self, data: bytes) -> int:
        """Producer side: append as much of data as fits, publish tail. Returns count."""
        head, tail = self.head, self.tail
        used = ring_used(head, tail)
        n = min(len(data), self.size - min(used, self.size))
        pos = 0
        for o, k in ring_segments(tail, n, self.size):
            self.data[o:o + k] = data[pos:pos + k]
            pos += k
        if n:
            self.tail = tail + n
        return n


# --------------------------------------------------------------------------
# Sinks and sources
# --------------------------------------------------------------------------
class MemorySink:
    """Collects output in memory (tests, `xomb-vmm run` capture)."""

    def __init__(self):
        self.data = bytearray()
        self._cond = threading.Condition()

    def write(self, b: bytes):
        with self._cond:
            self.data += b
            self._cond.notify_all()

    def flush(self):
        pass

    def wait_for(self, needle: bytes, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        with self._cond:
            while needle not in self.data:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


class FdSink:
    """Writes to a file descriptor (stdout, a pipe)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.broken = False

    def write(self, b: bytes):
        if self.broken:
            return
        mv = memoryview(b)
        try:
            while mv:
                n = os.write(self.fd, mv)
                mv = mv[n:]
        except BlockingIOError:
            select.select([], [self.fd], [], 1.0)
            self.write(bytes(mv))
        except OSError:
            self.broken = True       # reader went away (EPIPE): drop output

    def flush(self):
        pass


class BytesSource:
    """Gives fixed bytes, then EOF."""

    def __init__(self, data: bytes = b""):
        self._data = data

    def read(self, timeout: float) -> bytes | None:
        if self._data:
            d, self._data = self._data, b""
            return d
        return None


class QueueSource:
    """Bytes pushed at run time (tests, a monitor): push(), close() for EOF."""

    def __init__(self):
        self._buf = bytearray()
        self._eof = False
        self._cond = threading.Condition()

    def push(self, b: bytes):
        with self._cond:
            self._buf += b
            self._cond.notify_all()

    def close(self):
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def read(self, timeout: float) -> bytes | None:
        with self._cond:
            if not self._buf and not self._eof:
                self._cond.wait(timeout)
            if self._buf:
                d = bytes(self._buf)
                self._buf.clear()
                return d
            return None if self._eof else b""


class FdSource:
    """Reads a file descriptor (stdin pipe or tty) with a timeout; None = EOF."""

    def __init__(self, fd: int):
        self.fd = fd

    def read(self, timeout: float) -> bytes | None:
        try:
            r, _, _ = select.select([self.fd], [], [], timeout)
        except (OSError, ValueError):
            return None
        if not r:
            return b""
        try:
            d = os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        except OSError:
            return None
        return d or None


class ConsoleIO:
    """Where console output goes and input comes from."""

    def __init__(self, output=None, input=None):
        self.output = output if output is not None else MemorySink()
        self.input = input          # None: no input at all

    @classmethod
    def memory(cls, input: bytes = b"") -> "ConsoleIO":
        return cls(MemorySink(), BytesSource(input) if input else None)

    @classmethod
    def fds(cls, out_fd: int = 1, in_fd: int | None = 0) -> "ConsoleIO":
        return cls(FdSink(out_fd), FdSource(in_fd) if in_fd is not None else None)


# --------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------
WAIT_TIMEOUT = 0.05         # fallback poll while waiting for the doorbell
INPUT_POLL = 0.1


class Console(Device):
    name = "console"

    def __init__(self, io: ConsoleIO | None = None):
        self.io = io or ConsoleIO()
        self.stats = {"bytes_out": 0, "bytes_in": 0, "doorbells": 0, "doorbell_exits": 0,
                      "wakeups": 0, "timeouts": 0, "ring_errors": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._efd = None
        self._out_lock = threading.Lock()

    def attach(self, machine) -> None:
        super().attach(machine)
        bi = machine.boot.bootinfo
        self.out_ring = Ring(machine.mem.page(bi.console_out_pfn))
        self.in_ring = Ring(machine.mem.page(bi.console_in_pfn))
        self.out_ring.waiting = 0
        machine.register_mmio(abi.DEV_CONSOLE_DOORBELL, self)
        gpa = machine.device_page_gpa(abi.DEV_CONSOLE_DOORBELL)
        self._efd = machine.add_ioeventfd(gpa)     # None: no ioeventfd, doorbell exits
        self._mfence = machine.mfence

    # -- guest -> host ---------------------------------------------------------
    def drain(self) -> int:
        with self._out_lock:
            data = self.out_ring.consume()
            self.stats["ring_errors"] = self.out_ring.errors
            if data:
                self.stats["bytes_out"] += len(data)
                self.io.output.write(data)
                flush = getattr(self.io.output, "flush", None)
                if flush:
                    flush()
            return len(data)

    def _wait_doorbell(self, timeout: float) -> bool:
        if self._efd is None:
            time.sleep(timeout)
            return False
        try:
            r, _, _ = select.select([self._efd], [], [], timeout)
        except (OSError, ValueError):
            return False
        if r:
            try:
                n = os.eventfd_read(self._efd)
                if self._stop.is_set():
                    n -= 1                  # our own wake-up from stop()
                self.stats["doorbells"] += max(n, 0)
            except BlockingIOError:
                pass
            return True
        return False

    def _out_loop(self):
        ring = self.out_ring
        while not self._stop.is_set():
            self.drain()
            ring.waiting = 1
            self._mfence()
            if ring.used():             # published between drain and flag: no sleep
                ring.waiting = 0
                continue
            if self._wait_doorbell(WAIT_TIMEOUT):
                self.stats["wakeups"] += 1
            else:
                self.stats["timeouts"] += 1
            ring.waiting = 0
        self.drain()

    # -- host -> guest ---------------------------------------------------------
    def _in_loop(self):
        src = self.io.input
        pending = b""
        while not self._stop.is_set():
            if not pending:
                try:
                    d = src.read(INPUT_POLL)
                except ConsoleQuit:
                    self.machine.request_stop(self.machine.STATUS_QUIT, "quit from the console (Ctrl-A x)")
                    return
                if d is None:
                    return                  # EOF: the guest just sees no more input
                pending = d
                continue
            n = self.in_ring.produce(pending)
            self.stats["bytes_in"] += n
            raise_irq = getattr(self.machine, "raise_irq", None)
            if n and raise_irq:             # wake a reader halted in IDLE (irqfd: no exit)
                raise_irq(abi.DEV_CONSOLE_DOORBELL)
            pending = pending[n:]
            if pending:
                self._stop.wait(0.005)      # ring full: the guest is not reading yet

    # -- MMIO fallback (no ioeventfd, or a write elsewhere in the doorbell page) ----
    def mmio_write(self, page: int, offset: int, data: bytes) -> None:
        self.stats["doorbell_exits"] += 1
        if self._efd is not None:
            os.eventfd_write(self._efd, 1)
        else:
            self.drain()

    def start(self) -> None:
        self._stop.clear()
        self._threads = [device_thread(self._out_loop, "console-out")]
        if self.io.input is not None:
            self._threads.append(device_thread(self._in_loop, "console-in"))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        if self._efd is not None:
            try:
                os.eventfd_write(self._efd, 1)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=1.0)
        self._threads = []
        self.drain()
