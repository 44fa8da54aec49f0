"""`xomb-vmm bench`: the Linux half, the instruction counter, and a --quick run's
structure (no timed assertions: only that every number is sane)."""
from __future__ import annotations

import io
import json
import shutil

import pytest

from conftest import requires_kvm
from vmm import abi, bench


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc on the host")


@needs_gcc
def test_linux_bench_round():
    exe = bench.build_linux_bench()
    out = bench.run_linux_round(exe, ["getpid", "pipe"], quick=True)
    assert set(out) == {"getpid", "pipe"}
    assert all(0 < v < 1e8 for v in out.values())


def test_rows_are_descriptors():
    keys = [r.key for r in bench.ROWS]
    assert len(keys) == len(set(keys))
    for r in bench.ROWS:
        assert r.kind in ("guest", "guest2", "vm_create", "boot", "upgrade")
        if r.linux:
            assert r.kind in ("guest", "guest2") and r.linux_title


@requires_kvm
def test_instruction_counter_null_syscall():
    """The null syscall (MAP n=0) is a known tiny path: one kernel entry, a few
    dozen instructions, the same count every time."""
    from vmm import hostinfo
    built = bench._built()
    counts = []
    for _ in range(2):
        g = bench.run_guest(built, ["null"], rounds=1, quick=True, linux_exe=None, timeout=120)
        counts.append(g.insns["null"])
        assert g.rounds["null"] and g.rounds["null"][0] > 0
    c = counts[0]
    assert counts[0] == counts[1]
    assert c["entries"] == 1
    assert 10 <= c["kernel"] <= 80
    assert c["gate"] == (1 if hostinfo.host_type() == abi.HOST_PVM else 0)


@requires_kvm
@needs_gcc
def test_quick_bench_structure(tmp_path):
    result = bench.run_bench(quick=True, rounds=1)
    json.dumps(result)
    rows = {r["key"]: r for r in result["rows"]}
    assert set(rows) == {r.key for r in bench.ROWS}
    for r in bench.ROWS:
        row = rows[r.key]
        g = row["guest"]
        assert g and 0 < g["min"] <= g["median"] <= g["max"], r.key
        if r.linux:
            assert row["linux"] and row["linux"]["median"] > 0 and row["ratio"] > 0
        if r.target_insns:
            ins = row["insns"]
            assert ins and ins["kernel"] > 0 and ins["entries"] >= 1, r.key
        if r.kind in ("guest", "guest2"):
            assert row["exits_per_op"] is not None and row["exits_per_op"] >= 0
    assert rows["console"]["bytes_per_s"]["median"] > 0
    # across CPUs, two address spaces talk through a shared page: no kernel on
    # the path, so no VM exit (the time itself is a figure, not asserted: it
    # needs two free host cores)
    assert rows["xcpu"]["exits_per_op"] == 0
    up = rows["upgrade"]                    # a rebootless upgrade, against a reboot
    assert up["split"]["command_ms"]["median"] >= up["guest"]["median"] > 0
    assert up["split"]["reboot_instead_ms"]["median"] > 0
    from rich.console import Console
    buf = io.StringIO()
    bench.print_report(result, Console(file=buf, width=140))
    text = buf.getvalue()
    assert "null syscall" in text and "getpid" in text and "█" in text
    png = tmp_path / "b.png"
    if bench.write_plot(result, str(png)):
        assert png.stat().st_size > 0


@requires_kvm
def test_pool_refill_protocol():
    """bench --alloc: a child with a 64-page pool allocates 1024 pages; its
    pool runs dry again and again and its parent (xsh, which asks init in
    turn) refills it (UP_POOL)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "vmm.cli", "run", "bench", "--alloc", "4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "alloc ok: 4 MiB, initial pool 64 pages" in r.stdout
