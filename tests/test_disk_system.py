"""The disk on the running system: host tool <-> guest file system round trip, a reboot,
the hostile driver, two VFs isolated, and kill -9 in the middle of writes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, requires_kvm
from vmm import abi, xofs


def xomb(*args: str, timeout: float = 60, input: str | None = None) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "vmm.cli", *args], cwd=ROOT, input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    rc, out = xomb("mkfs", str(p), "--size", "32M", "--namespaces", "2")
    assert rc == 0 and "2 namespaces" in out
    return p


def test_host_tool_round_trip(image, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(10000))
    assert xomb("fs", str(image), "mkdir", "/d")[0] == 0
    assert xomb("fs", str(image), "put", str(src), "/d/x.bin")[0] == 0
    rc, out = xomb("fs", str(image), "ls", "/d")
    assert rc == 0 and "x.bin" in out and "10000" in out
    assert xomb("fs", str(image), "get", "/d/x.bin", str(tmp_path / "out.bin"))[0] == 0
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    rc, out = xomb("fs", str(image), "rm", "/d")
    assert rc == 2 and "not empty" in out
    assert xomb("fs", str(image), "check")[0] == 0


@requires_kvm
def test_guest_file_system_round_trip_and_reboot(image, tmp_path):
    (tmp_path / "h.txt").write_text("written by the host\n")
    assert xomb("fs", str(image), "put", str(tmp_path / "h.txt"), "/h.txt")[0] == 0
    rc, out = xomb("boot", "--disk", str(image), input=(
        "cat /h.txt\nmkdir /g\necho from the guest > /g/e.txt\nwrite /g/w.txt a b c\n"
        "ls / > /g/listing\nrm /h.txt\nhello to file > /g/prog\nsysconf > /g/big\nls /g\nexit 5\n"))
    assert rc == 5, out
    assert "written by the host" in out
    assert "e.txt" in out and "w.txt" in out and "listing" in out
    with xofs.Fs.open(str(image)) as fs:
        assert fs.read("/g/e.txt") == b"from the guest\n"
        assert fs.read("/g/w.txt") == b"a b c\n"
        assert b"g/" in fs.read("/g/listing") and b"h.txt" in fs.read("/g/listing")
        assert b'argv[1] = "to"' in fs.read("/g/prog")           # a program's output
        assert fs.read("/g/big").rstrip().endswith(b", 0 failed")   # > one ring (2 KiB)
        assert [n for n, _, _ in fs.listdir("/")] == ["g"]
        assert fs.check() == []
    # a reboot sees the same files
    rc, out = xomb("run", "--disk", str(image), "cat", "/g/e.txt", "/g/w.txt")
    assert rc == 0 and "from the guest\na b c\n" in out, out


@requires_kvm
def test_hostile_driver_is_stopped_and_the_system_survives(image):
    rc, out = xomb("boot", "--disk", str(image),
                   input="dmatest\ndmatest\nwrite /still-here ok\ncat /still-here\nexit 0\n")
    assert rc == 0, out
    assert "FAIL" not in out, out
    assert out.count("dmatest: 24 passed, 0 failed, 10 IOMMU faults delivered") == 2, out
    assert "ok\n" in out.split("cat /still-here", 1)[1]
    # dmatest wrote into its own namespace (VF 1) only: VF 0's file system is intact
    with xofs.Fs.open(str(image), 0) as fs:
        assert fs.check() == [] and fs.read("/still-here") == b"ok\n"


@requires_kvm
def test_two_vfs_are_isolated(image):
    """xsh's VF 0 and a child's VF 1: the child's file system is its own namespace."""
    rc, out = xomb("boot", "--disk", str(image),
                   input="write /mine shell\ndisktest churn 5\nls /\nexit 0\n")
    assert rc == 0 and "wrote 5 files" in out, out
    with xofs.Fs.open(str(image), 0) as fs0, xofs.Fs.open(str(image), 1) as fs1:
        assert [n for n, _, _ in fs0.listdir("/")] == ["mine"]
        assert [n for n, _, _ in fs1.listdir("/")] == ["churn"]
        assert len(fs1.listdir("/churn")) == 5


@requires_kvm
def test_file_mapped_as_memory_and_partial_writes(image):
    rc, out = xomb("boot", "--disk", str(image), input="disktest fsops\nexit 0\n")
    assert rc == 0 and "disktest: fsops ok" in out, out
    with xofs.Fs.open(str(image), 1) as fs:
        assert fs.read("/ops") == b"HELLO\0\0\0!" and fs.check() == []


def _churn_payload(i: int) -> bytes:
    n = 100 + (i * 1237) % 9000
    return bytes(ord("a") + (i * 7 + k) % 26 for k in range(n))


@requires_kvm
def test_kill_9_during_writes_keeps_every_flushed_write(image):
    proc = subprocess.Popen([sys.executable, "-m", "vmm.cli", "boot", "--disk", str(image)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    proc.stdin.write(b"disktest churn 100000\n")
    proc.stdin.flush()
    os.set_blocking(proc.stdout.fileno(), False)
    out = b""
    deadline = time.monotonic() + 60
    while b"acked 40\n" not in out and time.monotonic() < deadline:
        chunk = proc.stdout.read() or b""
        out += chunk
        time.sleep(0.01)
    time.sleep(0.05)                    # let it run on mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out += proc.stdout.read() or b""
    acked = [int(l.split()[1]) for l in out.decode().splitlines() if l.startswith("acked ")]
    assert acked and acked[-1] >= 40, out[-500:]
    last = acked[-1]
    with xofs.Fs.open(str(image), 1) as fs:            # it still mounts, and is clean
        assert fs.check() == []
        for slot in range(min(64, last + 1)):   # every acknowledged write is there (or newer)
            i = max(j for j in range(last + 1) if j % 64 == slot)
            got = fs.read(f"/churn/{slot}")
            newer = [_churn_payload(j) for j in range(i, last + 3) if j % 64 == slot]
            assert got in newer, (slot, i)


def test_completions_by_interrupt_with_no_tick(image):
    """The driver's choice: with DS_IRQ set it halts its CPU while it waits, and
    with no timer tick only the disk's interrupt (irqfd -> MSI -> INTERRUPT
    upcall) can wake it, so every round trip completing proves the path."""
    rc, out = xomb("run", "--no-timer", "--disk", str(image), "disktest", "irq", "25")
    assert rc == 0, out[-2000:]
    assert "irq: 25 write+read round trips, completions by interrupt" in out
