"""End to end: the real kernel, init, xsh and programs on a real KVM VM.

Each test runs the `xomb-vmm` command as a user would (`python -m vmm.cli`).
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import requires_kvm

pytestmark = [pytest.mark.kvm, requires_kvm]

TIMEOUT = 120


def xomb(*args, input=None, timeout=TIMEOUT):
    p = subprocess.run([sys.executable, "-m", "vmm.cli", *args], input=input,
                       capture_output=True, text=True, timeout=timeout,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module", autouse=True)
def built():
    code, out, err = xomb("build")
    assert code == 0, err


def test_hello_prints_its_arguments():
    code, out, err = xomb("run", "hello", "alpha", "beta")
    assert code == 0, out + err
    assert "Hello from hello!" in out
    assert "alpha" in out and "beta" in out


def test_exit_status_comes_back_through_shell_and_init():
    code, out, err = xomb("run", "hello", "--status", "7")
    assert code == 7, out + err


def test_shell_builtins_and_unknown_program():
    code, out, _ = xomb("run", "echo", "one", "two")
    assert code == 0 and "one two" in out
    code, out, _ = xomb("run", "no-such-program")
    assert code == 127 and "no-such-program" in out


def test_sysconf_reports_no_failure():
    code, out, err = xomb("run", "sysconf")
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert not fails, "\n".join(fails) + err
    m = re.search(r"sysconf: (\d+) passed, (\d+) failed", out)
    assert m and int(m.group(1)) >= 40 and m.group(2) == "0", out + err
    assert code == 0


def test_faults_are_contained_and_the_system_keeps_running():
    code, out, err = xomb("run", "faults")
    attacks = [line for line in out.splitlines() if line.startswith("attack ")]
    assert len(attacks) >= 12, out + err
    assert not [a for a in attacks if "NOT STOPPED" in a], out
    assert code == 0, out + err


def test_interactive_shell_session():
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "vmm.cli", "boot"], encoding="utf-8",
                          timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        child.expect(r"xsh\$ ")
        child.sendline("hello from-a-terminal")
        child.expect("from-a-terminal")
        child.expect(r"xsh\$ ")
        child.sendline("as")
        child.expect(r"xsh\$ ")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5
