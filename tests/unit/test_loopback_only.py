"""The suite's own guard (tests/conftest.py loopback_only): a test that resolves a name other
than localhost or dials beyond loopback is refused before anything leaves, and is failed."""
import socket
import urllib.request

import pytest


def test_a_public_name_is_not_resolved(loopback_only):
    with pytest.raises(socket.gaierror, match="only loopback names"):
        socket.getaddrinfo("example.com", 443)
    assert loopback_only == ["resolve 'example.com'"]
    loopback_only.clear()  # the attempt was this test's point


@pytest.mark.parametrize("address, family", [("192.0.2.1", socket.AF_INET), ("2001:db8::1", socket.AF_INET6),
                                             ("::ffff:8.8.8.8", socket.AF_INET6)])
def test_an_address_beyond_loopback_is_not_dialed(loopback_only, address, family):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(ConnectionRefusedError):
            sock.connect((address, 9))
        assert sock.connect_ex((address, 9)) != 0
    assert len(loopback_only) == 2 and address in loopback_only[0]
    loopback_only.clear()


def test_a_library_taking_the_refusal_in_its_stride_is_still_caught(loopback_only):
    """urllib turns the refusal into a URLError a caller may swallow; the record remains."""
    try:
        urllib.request.urlopen("http://192.0.2.1:9/", timeout=1)
    except OSError:
        pass
    assert len(loopback_only) == 1 and "192.0.2.1" in loopback_only[0]  # refused at getaddrinfo
    loopback_only.clear()


def test_loopback_is_dialed(loopback_only):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            pass
    assert loopback_only == []
