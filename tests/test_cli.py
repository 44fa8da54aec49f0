"""The command line: sizes, kernel-image validation, one-line errors, exit code 2."""
import struct

import pytest

from vmm import abi, cli


@pytest.mark.parametrize("text,value", [("128M", 128 << 20), ("1G", 1 << 30), ("16384k", 16 << 20),
                                        ("64MiB", 64 << 20), ("2gb", 2 << 30), ("4096", 4096)])
def test_parse_size(text, value):
    assert cli.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12X", "M", "-5M", "1.5G", "12 M B"])
def test_parse_size_rejects(text):
    with pytest.raises(cli.CliError, match="bad memory size"):
        cli.parse_size(text)


def test_check_mem_limits():
    assert cli.check_mem("128M") == 128 << 20
    with pytest.raises(cli.CliError, match="too small"):
        cli.check_mem("8M")
    with pytest.raises(cli.CliError, match="too large"):
        cli.check_mem("4G")
    with pytest.raises(cli.CliError, match="multiple of 4K"):
        cli.check_mem("16777217")


def multiboot(flags=0x3, at=0x40, size=0x3000, bad_sum=False):
    img = bytearray(size)
    csum = (-(cli.MULTIBOOT_MAGIC + flags)) & 0xFFFFFFFF
    struct.pack_into("<III", img, at, cli.MULTIBOOT_MAGIC, flags, csum ^ bad_sum)
    return bytes(img)


def test_validate_kernel_image():
    cli.validate_kernel_image(multiboot())
    with pytest.raises(cli.ImageError, match="empty"):
        cli.validate_kernel_image(b"")
    with pytest.raises(cli.ImageError, match="larger than"):
        cli.validate_kernel_image(multiboot(size=abi.KERNEL_MAX + 1))
    with pytest.raises(cli.ImageError, match="no valid multiboot header"):
        cli.validate_kernel_image(multiboot(bad_sum=True))
    with pytest.raises(cli.ImageError, match="no valid multiboot header"):
        cli.validate_kernel_image(multiboot(at=0x2000 + 4))   # beyond the first 8 KiB


def test_parse_map():
    text = "# kernel map\nffffffff80100000 kernel_start64\nsyscall_entry 0xffffffff80100400\n\njunk\n"
    assert cli.parse_map(text) == {"kernel_start64": 0xffffffff80100000,
                                   "syscall_entry": 0xffffffff80100400}


def run_main(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_missing_kvm_is_one_line_exit_2(tmp_path, capsys):
    rc, out, err = run_main(["boot", "--kvm-device", str(tmp_path / "kvm")], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("xomb-vmm: ") and "not found" in err
    rc, _, err2 = run_main(["--kvm-device", str(tmp_path / "kvm"), "run", "hello"], capsys)
    assert rc == 2 and err2 == err


@pytest.mark.parametrize("argv,needle", [
    (["boot", "--cpus", "9"], "--cpus 9: between 1 and 8"),
    (["boot", "--cpus", "0"], "--cpus 0: between 1 and 8"),
    (["boot", "--mem", "lots"], "bad memory size"),
    (["run", "--mem", "1M", "hello"], "too small"),
    (["boot", "--kernel", "/nonexistent/kernel.bin"], "No such file"),
])
def test_usage_errors(argv, needle, capsys):
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"\x7fELF" + bytes(5000), bytes(range(256)) * 40])
def test_corrupt_kernel_image(tmp_path, capsys, content):
    k = tmp_path / "kernel.bin"
    k.write_bytes(content)
    rc, _, err = run_main(["boot", "--kernel", str(k)], capsys)
    assert rc == 2 and err.startswith(f"xomb-vmm: {k}") and err.count("\n") == 1


def test_kernel_directory(tmp_path, capsys):
    rc, _, err = run_main(["boot", "--kernel", str(tmp_path)], capsys)
    assert rc == 2 and "is a directory" in err


def test_run_requires_program(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["run"])
    assert ei.value.code == 2


def test_print_stats():
    import io
    s = io.StringIO()
    cli.print_stats({"boot_to_prompt_ms": 12.5, "create_ms": 1.0, "first_exit_us": 300,
                     "exits": {"MMIO": 3}, "console": {"bytes_out": 10, "bytes_in": 0,
                                                       "doorbells": 2, "doorbell_exits": 0}}, s)
    assert "boot-to-prompt 12.50 ms" in s.getvalue() and "MMIO 3" in s.getvalue()


def test_terminal_raw_mode_restored_on_exception():
    import os, pty, termios
    from vmm.terminal import Terminal
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError):
            with Terminal(slave) as t:
                assert t.raw
                now = termios.tcgetattr(slave)
                assert not now[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
                raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_stdio_console_modes():
    import os
    from vmm.terminal import stdio_console, EscapeSource
    from devices.console import FdSource
    r, w = os.pipe()
    try:
        io, term = stdio_console(interactive=True, in_fd=r, out_fd=w)
        assert not term.raw and isinstance(io.input, FdSource)     # a pipe: plain bytes
    finally:
        os.close(r)
        os.close(w)
    import pty
    master, slave = pty.openpty()
    try:
        io, term = stdio_console(interactive=True, in_fd=slave, out_fd=slave)
        assert term.raw and isinstance(io.input, EscapeSource)
        io, term = stdio_console(interactive=False, in_fd=slave, out_fd=slave)
        assert not term.raw and io.input is None                   # run: tty not read
    finally:
        os.close(master)
        os.close(slave)


SPIN_SCRIPT = r"""
import sys
sys.path[:0] = [{tests!r}, {root!r}]
from conftest import make_tiny_boot
from vmm import terminal
from vmm.machine import Machine
io, term = terminal.stdio_console(interactive=True)
m = Machine(make_tiny_boot("spin:\njmp spin"), console=io)
terminal.hint()
with term:
    status = m.run(timeout=20)
m.close()
print("STATUS", status, m.stop_reason)
sys.exit(status)
"""


@pytest.mark.kvm
def test_ctrl_a_x_quits_and_restores_terminal(tmp_path):
    from conftest import kvm_usable, ROOT
    if not kvm_usable():
        pytest.skip("needs a usable /dev/kvm")
    pexpect = pytest.importorskip("pexpect")
    import sys
    script = tmp_path / "spin.py"
    script.write_text(SPIN_SCRIPT.format(tests=str(ROOT / "tests"), root=str(ROOT)))
    child = pexpect.spawn(sys.executable, [str(script)], timeout=15, encoding="utf-8")
    child.expect("Ctrl-A x quits")
    child.send("\x03")                     # Ctrl-C is a byte for the guest, not a signal
    child.send("\x01x")
    child.expect("STATUS 130 quit from the console")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
