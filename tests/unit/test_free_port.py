"""free_port: loopback ports for the processes a launcher or a test starts."""

import socket

from recmesh.common.local import free_port


def test_ports_are_never_handed_out_twice_and_are_free():
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)  # the kernel may repeat an ephemeral port; free_port does not
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # free when handed out
