"""Console rings (pure + threaded, no KVM), the Ctrl-A escape, the platform page."""
import os
import threading
import time

import pytest
from hypothesis import given, strategies as st

from vmm import abi
from vmm.memory import GuestMemory
from vmm.terminal import EscapeFilter, make_raw
from devices.console import (Console, ConsoleIO, ConsoleQuit, MemorySink, QueueSource, Ring,
                             BytesSource, ring_segments, ring_used, MASK32)
from devices.platform import Platform

u32 = st.integers(0, MASK32)


@given(u32, st.integers(0, abi.RING_SIZE))
def test_ring_used_wraps(head, n):
    assert ring_used(head, (head + n) & MASK32) == n


@given(u32, st.integers(0, abi.RING_SIZE))
def test_segments_cover_exactly(index, n):
    segs = ring_segments(index, n)
    assert sum(k for _, k in segs) == n
    assert len(segs) <= 2
    pos = index % abi.RING_SIZE
    for off, k in segs:
        assert off == pos and off + k <= abi.RING_SIZE
        pos = (off + k) % abi.RING_SIZE


@given(u32, st.lists(st.binary(min_size=0, max_size=700), max_size=12))
def test_ring_roundtrip_across_wraparound(start, chunks):
    ring = Ring(bytearray(abi.PAGE))
    ring.head = ring.tail = start
    sent, got = b"", b""
    for c in chunks:
        n = ring.produce(c)
        assert n == min(len(c), abi.RING_SIZE - ring_used(ring.head, ring.tail) + n)
        sent += c[:n]
        if len(c) % 2:                  # consume sometimes, so indices move and wrap
            got += ring.consume()
    got += ring.consume()
    assert got == sent
    assert ring.used() == 0


def test_ring_full_and_corrupt():
    ring = Ring(bytearray(abi.PAGE))
    ring.head = ring.tail = MASK32 - 5
    assert ring.produce(b"x" * (abi.RING_SIZE + 10)) == abi.RING_SIZE
    assert ring.free() == 0 and ring.tail == (MASK32 - 5 + abi.RING_SIZE) & MASK32
    assert ring.produce(b"y") == 0
    ring.tail = ring.head + abi.RING_SIZE + 1       # a guest bug
    assert ring.consume() == b"" and ring.errors == 1 and ring.used() == 0


def test_escape_filter():
    f = EscapeFilter()
    assert f.feed(b"ab\x03c") == b"ab\x03c"          # Ctrl-C is just a byte
    assert f.feed(b"\x01") == b""                    # pending across reads
    assert f.feed(b"a") == b"\x01"
    assert f.feed(b"\x01z") == b"\x01z"
    helped = []
    f = EscapeFilter(on_help=lambda: helped.append(1))
    assert f.feed(b"\x01h") == b"" and helped
    with pytest.raises(ConsoleQuit):
        f.feed(b"q\x01x")


def test_raw_mode_keeps_output_processing():
    import termios
    attrs = [termios.ICRNL | termios.IXON, termios.OPOST | termios.ONLCR, 0,
             termios.ECHO | termios.ICANON | termios.ISIG, 0, 0, [0] * 32]
    raw = make_raw(attrs)
    assert raw[0] & (termios.ICRNL | termios.IXON) == 0
    assert raw[3] & (termios.ECHO | termios.ICANON | termios.ISIG) == 0
    assert raw[1] == termios.OPOST | termios.ONLCR


# --------------------------------------------------------------------------
# The device threads, against a fake machine (no KVM)
# --------------------------------------------------------------------------
class FakeMachine:
    STATUS_QUIT = 130
    ram_bytes = abi.MIN_RAM

    def __init__(self, with_eventfd=True):
        self.mem = GuestMemory.from_buffer(bytearray(0x10000))
        self.boot = type("B", (), {})()
        self.boot.bootinfo = type("BI", (), {"console_out_pfn": 7, "console_in_pfn": 8})()
        self.mmio = {}
        self.stats = {}
        self.t_start = time.perf_counter()
        self.t_first_run = 0
        self.efd = os.eventfd(0, os.EFD_NONBLOCK) if with_eventfd else None
        self.stopped = None

    def register_mmio(self, i, dev):
        self.mmio[i] = dev

    def device_page_gpa(self, i):
        return self.ram_bytes + i * abi.PAGE

    def add_ioeventfd(self, gpa, length=None):
        return self.efd

    @staticmethod
    def mfence():
        pass

    def request_stop(self, status, reason="", guest=False):
        self.stopped = (status, reason)


def guest_write(m, ring, data: bytes):
    """What the guest does: bytes, publish tail, ring only if the host waits."""
    assert ring.produce(data) == len(data)
    if ring.waiting and m.efd is not None:
        os.eventfd_write(m.efd, 1)
        return 1
    return 0


@pytest.mark.parametrize("with_eventfd", [True, False])
def test_console_drains_out_ring(with_eventfd):
    m = FakeMachine(with_eventfd)
    io = ConsoleIO.memory()
    con = Console(io)
    con.attach(m)
    assert m.mmio[abi.DEV_CONSOLE_DOORBELL] is con
    guest_ring = Ring(m.mem.page(7))
    con.start()
    try:
        rings = 0
        for i in range(20):
            rings += guest_write(m, guest_ring, b"line %d\n" % i)
            time.sleep(0.002)
        assert io.output.wait_for(b"line 19\n", 2.0)
    finally:
        con.stop()
    assert bytes(io.output.data) == b"".join(b"line %d\n" % i for i in range(20))
    assert con.stats["bytes_out"] == len(io.output.data)
    assert rings <= 20


def test_console_final_drain_on_stop():
    m = FakeMachine()
    io = ConsoleIO.memory()
    con = Console(io)
    con.attach(m)
    con.start()
    con.stop()
    Ring(m.mem.page(7)).produce(b"late\n")       # written with nobody awake
    con.drain()
    assert bytes(io.output.data) == b"late\n"


def test_console_doorbell_mmio_fallback():
    m = FakeMachine(with_eventfd=False)
    io = ConsoleIO.memory()
    con = Console(io)
    con.attach(m)
    Ring(m.mem.page(7)).produce(b"x")
    con.mmio_write(abi.DEV_CONSOLE_DOORBELL, 0, b"\1\0\0\0")
    assert bytes(io.output.data) == b"x" and con.stats["doorbell_exits"] == 1


def test_console_input_into_in_ring():
    m = FakeMachine()
    src = QueueSource()
    con = Console(ConsoleIO(MemorySink(), src))
    con.attach(m)
    ring = Ring(m.mem.page(8))
    ring.head = ring.tail = MASK32 - 3
    con.start()
    try:
        src.push(b"ls\n")
        src.push(b"x" * (abi.RING_SIZE + 100))       # more than fits: host waits
        got = b""
        deadline = time.monotonic() + 3
        while len(got) < 3 + abi.RING_SIZE + 100 and time.monotonic() < deadline:
            got += ring.consume()                    # the guest polls
            time.sleep(0.001)
        assert got == b"ls\n" + b"x" * (abi.RING_SIZE + 100)
    finally:
        src.close()
        con.stop()


def test_console_quit_from_input():
    m = FakeMachine()

    class Quit:
        def read(self, timeout):
            raise ConsoleQuit()
    con = Console(ConsoleIO(MemorySink(), Quit()))
    con.attach(m)
    con.start()
    con.stop()
    assert m.stopped and m.stopped[0] == 130


def test_bytes_source_eof():
    s = BytesSource(b"ab")
    assert s.read(0) == b"ab" and s.read(0) is None


def test_platform_exit_and_boot_timer():
    m = FakeMachine()
    p = Platform()
    p.attach(m)
    assert m.mmio[abi.DEV_PLATFORM] is p
    p.mmio_write(abi.DEV_PLATFORM, abi.PLAT_BOOT_TIMER, b"\1\0\0\0")
    assert m.stats["boot_to_prompt_ms"] >= 0
    p.mmio_write(abi.DEV_PLATFORM, abi.PLAT_EXIT, (42).to_bytes(4, "little"))
    assert m.stopped[0] == 42
    assert p.mmio_read(abi.DEV_PLATFORM, 0, 4) == b"\0" * 4
