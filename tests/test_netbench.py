"""`xomb-vmm bench`'s host <-> guest network rows (vmm/netbench_host.py) in quick mode:
the structure and that every figure is positive.  No timed assertions: the figures are
printed by the benchmark, not judged here.  Needs KVM and root with network namespaces
and a TAP (vmm/netns.py)."""
from __future__ import annotations

import json
import subprocess

from conftest import requires_kvm
from netns import requires_netns
from vmm import netbench_host, netns


@requires_kvm
@requires_netns
def test_host_guest_rows_quick():
    before = set(subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True,
                                timeout=30).stdout.split())
    assert netbench_host.skip_reason() is None
    rows = netbench_host.host_bench_rows(quick=True)
    json.dumps(rows)
    by = {r["key"]: r for r in rows}
    for key in ("ping_rtt_us", "udp_echo_per_s", "tcp_echo_MBps"):
        r = by[key]
        assert r["guest"] > 0 and r["host"] > 0 and r["ratio"] > 0, r
    p = by["ping_rtt_us"]
    assert 0 < p["guest_min"] <= p["guest"] <= p["guest_max"]
    assert 0 < p["host_min"] <= p["host"] <= p["host_max"]
    for name in ("ping", "udp", "tcp"):
        r = by[f"vmm_exits_per_frame_{name}"]
        assert r["frames"] > 0 and r["exits"] >= 0 and r["guest"] >= 0 and r["host"] is None
    run = by["doorbells_per_frame"]             # the VMM's --boot-stats line at exit
    assert run["tx"] > 0 and run["rx"] > 0 and run["guest"] >= 0
    assert by["irqs_per_frame"]["guest"] >= 0
    text = netbench_host.format_rows(rows)
    assert "ping RTT" in text and "TCP echo" in text and "guest/host" in text
    after = set(subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True,
                               timeout=30).stdout.split())
    assert not {n for n in after - before if n.startswith("xombbench-")}   # all deleted


def test_skip_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(netns, "skip_reason", lambda: "needs root (network namespaces ...)")
    assert netbench_host.skip_reason() == "netns: needs root (network namespaces ...)"
    monkeypatch.setattr(netns, "skip_reason", lambda: None)
    assert "needs" in netbench_host.skip_reason("/nonexistent/kvm")
