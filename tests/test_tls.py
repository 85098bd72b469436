"""wsproxy behind gunicorn's own TLS (``--certfile``): simple-websocket's
reader thread reads the socket while the handler writes to it, so a write
must never change the socket's timeout (a read that began meanwhile would
inherit it, and a client quiet for longer than WSPROXY_SEND_TIMEOUT would
be dropped with 1006)."""

import datetime
import ipaddress
import re
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .helpers import Gunicorn, WSClient, scaled, server_env, wait_for

SEND_TIMEOUT = 1.0  # seconds; the quiet spells below are three of these


def _self_signed(folder):
    """A certificate for 127.0.0.1 and its key, as files; the SSL context
    a client trusts it with."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(cafile=str(cert_file))
    return cert_file, key_file, context


def _start_tls(env, cert_file, key_file, context, servers):
    server = Gunicorn(
        env, args=["--certfile", str(cert_file), "--keyfile", str(key_file)]
    )
    servers.append(server)
    server.start(listen=False)
    match = wait_for(
        lambda: (
            server._exited()
            or re.search(r"Listening at: https://127\.0\.0\.1:(\d+)", server.output())
        ),
        30,
        "gunicorn to listen",
    )
    server.port = int(match.group(1))

    def ready():
        import urllib.request

        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{server.port}/readyz",
                context=context,
                timeout=scaled(5),
            ) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(ready, 30, "/readyz over TLS")
    return server


@pytest.mark.heavy
def test_a_client_quiet_after_a_burst_with_pings_stays_connected(
    mongo, mongo_client, namespace, tmp_path
):
    """A client pings while a burst is written to it (each ping's pong and
    the next read by simple-websocket's reader thread happen among the
    handler's writes), then sends nothing for three send timeouts: it is
    still connected, and still served."""
    db, coll = namespace
    cert_file, key_file, context = _self_signed(tmp_path)
    servers = []
    try:
        server = _start_tls(
            server_env(
                mongo.uri,
                db,
                coll,
                WSPROXY_SEND_TIMEOUT=SEND_TIMEOUT,
                WSPROXY_CLIENT_MESSAGE_RATE=1000,
                WSPROXY_CLIENT_MESSAGE_BURST=1000,
            ),
            cert_file,
            key_file,
            context,
            servers,
        )
        items = mongo_client[db][coll]
        client = WSClient(
            f"wss://127.0.0.1:{server.port}/ws", ssl=context, ping_interval=None
        )
        try:
            assert client.recv()["type"] == "hello"
            n = 0
            for burst in range(5):
                items.insert_many([{"n": n + i} for i in range(1000)])
                changes, pongs, pings = 0, 0, 0
                while changes < 1000 or pongs < pings:
                    message = client.recv(10)
                    if message["type"] == "pong":
                        pongs += 1
                        continue
                    assert message["type"] == "change", message
                    assert message["event"]["fullDocument"]["n"] == n + changes
                    changes += 1
                    if changes % 5 == 0:
                        # Frames the reader thread passes on without
                        # writing anything (a ping frame's pong would have
                        # to wait for the handler's writes), so its next
                        # read begins while the handler is writing.
                        client.ws.send('{"type": "ping"}')
                        client.ws.pong()
                        pings += 1
                n += 1000
                # Quiet: nothing from the client, and nothing to send it,
                # for three send timeouts.
                try:
                    message = client.recv(3 * SEND_TIMEOUT)
                except AssertionError:
                    pass  # nothing within that time, as expected
                else:
                    raise AssertionError(f"unexpected {message}")
                # Still connected: the next event arrives.
                items.insert_one({"n": n})
                change = client.recv_type("change")
                assert change["event"]["fullDocument"]["n"] == n, burst
                n += 1
        finally:
            client.close()
        output = server.output()
        assert "connection lost" not in output, output[-3000:]
        assert "Traceback" not in output
    finally:
        for server in servers:
            server.stop()


def test_a_blocking_write_to_a_peer_that_does_not_read_ends_at_its_deadline():
    """The watchdog, on a plain blocking socket as a TLS one is written:
    the write ends with SendTimeout at its deadline, and the socket's own
    timeout is never touched."""
    import socket
    import time

    from wsproxy.transport.websocket import SendTimeout, _write_all

    ours, peer = socket.socketpair()
    try:
        started = time.monotonic()
        try:
            _write_all(ours, b"x" * (64 << 20), started + 0.5, nonblocking=False)
        except SendTimeout:
            pass
        else:
            raise AssertionError("the write did not time out")
        took = time.monotonic() - started
        assert 0.5 <= took < scaled(2.5), took
        assert ours.gettimeout() is None
        # Writes that finish in time are not cut.
        a, b = socket.socketpair()
        try:
            _write_all(a, b"y" * 1000, time.monotonic() + 0.5, nonblocking=False)
            assert b.recv(2000) == b"y" * 1000
        finally:
            a.close()
            b.close()
    finally:
        ours.close()
        peer.close()
