"""Ports for servers that start a while after they are chosen (test stacks, the bench's stack)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amctl.local import processes

pytestmark = pytest.mark.unit


def test_ports_for_servers_started_later_stay_out_of_the_ephemeral_range() -> None:
    # a port from the ephemeral range can become an outgoing connection's source port before its server binds it
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    for _ in range(20):
        ports.append(processes.service_port(taken=ports))
    assert len(set(ports)) == 20 and all(20000 <= p < min(low, 30000) for p in ports)
