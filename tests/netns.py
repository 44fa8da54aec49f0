"""Throwaway network namespaces with a TAP device, for tests that put the guest on a network.

    from netns import netns, requires_netns

    @requires_netns
    def test_x():
        with netns() as ns:                      # xombtest-<pid>-<n>, tap inside it, host 10.0.2.1/24
            vm = ns.popen(sys.executable, "-m", "vmm.cli", "run", "--net", f"tap:{ns.tap}", ...)
            s = ns.packet_socket()               # AF_PACKET on the tap, inside the namespace
            ns.run("ping", "-c", "1", "10.0.2.15")

The namespace logic is the product's (vmm/netns.py, also used by the benchmark); this
module adds pytest's skipping: `netns()` skips the test with a reason when not root, or
`ip` or /dev/net/tun is missing, or the kernel refuses network namespaces.
"""
from __future__ import annotations

import contextlib

import pytest

from vmm import netns as _netns
from vmm.netns import CLONE_NEWNET, ETH_P_ALL, NetNs, skip_reason

__all__ = ["CLONE_NEWNET", "ETH_P_ALL", "NetNs", "netns", "requires_netns", "skip_reason"]

requires_netns = pytest.mark.skipif(skip_reason() is not None,
                                    reason=f"netns: {skip_reason()}")


@contextlib.contextmanager
def netns(host: str = "10.0.2.1/24"):
    """A namespace with a TAP (admin up, host address `host`) and lo up; removed after."""
    reason = skip_reason()
    if reason:
        pytest.skip(f"netns: {reason}")
    with _netns.netns(host) as ns:
        yield ns
