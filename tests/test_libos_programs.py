"""The libOS programs on the real system: boot, run, look at what they print.

These boot the whole machine (kernel + VMM + libOS) through the CLI, so they
need /dev/kvm (or QEMU for the last one)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, requires_kvm


def xomb(*args: str, timeout: float = 300, input: str | None = None) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "vmm.cli", *args], cwd=ROOT, input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout


@requires_kvm
def test_hello_arguments_and_status():
    rc, out = xomb("run", "hello", "one", "two", "--status", "3")
    assert "Hello from hello!" in out
    assert 'argv[1] = "one"' in out and 'argv[2] = "two"' in out
    assert "[exit 3]" in out
    assert rc == 3


@requires_kvm
def test_unknown_program_is_127():
    rc, out = xomb("run", "no-such-program")
    assert "command not found" in out
    assert rc == 127


@requires_kvm
def test_sysconf_passes_everything():
    rc, out = xomb("run", "sysconf")
    assert "FAIL" not in out, out
    assert "sysconf: " in out and ", 0 failed" in out, out
    assert out.count("PASS ") >= 100
    assert rc == 0


@requires_kvm
def test_faults_are_all_stopped_and_the_system_survives():
    rc, out = xomb("run", "faults")
    assert "NOT STOPPED" not in out, out
    assert out.count("attack ") >= 25 and "0 not stopped" in out
    assert rc == 0


@requires_kvm
def test_interactive_shell():
    rc, out = xomb("boot", input="echo hi 'a b'\nhello x\nas\nnosuch\nexit 4\n", timeout=120)
    assert "xsh$ " in out
    assert "hi a b" in out
    assert "Hello from hello!" in out
    assert "handle 1" in out and "parent" in out
    assert "command not found" in out
    assert rc == 4


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_hello_under_qemu():
    from vmm import qemu
    status, out = qemu.run_qemu("hello q --status 5", 1, timeout=120)
    assert "Hello from hello!" in out and 'argv[1] = "q"' in out
    assert status == 5
