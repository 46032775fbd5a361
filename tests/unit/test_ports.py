"""stack.ports: servers get free ports outside the kernel's ephemeral range."""

import socket

from stack import ports


def test_a_free_port_is_below_the_ephemeral_range_and_bindable():
    low = ports.ephemeral_low()
    for _ in range(20):
        port = ports.free_port()
        assert ports.LOWEST <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # raises if it was not free


def test_a_port_in_use_is_not_free():
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.free_port()))
        s.listen()
        assert not ports.port_free(s.getsockname()[1])


def test_an_unreadable_range_falls_back_to_linux_default(monkeypatch, tmp_path):
    monkeypatch.setattr(ports, "Path", lambda _p: tmp_path / "missing")
    assert ports.ephemeral_low() == 32768
