"""TLS on the consumer listener, with certificates made by the test (trustme): read by
curl --cacert and by Python's ssl, re-read on reload, pinned by `lsproxy status --config`."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import sys
from pathlib import Path

import pytest
import trio
import trustme

from tests.harness import running
from tests.integration.test_access import CONSUMERS, OPS_TOKEN, TEAM_TOKEN

HOST = "proxy.example"  # the certificate's name; the tests connect to 127.0.0.1


class Pki:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.cert, self.key = base / "cert.pem", base / "key.pem"
        self.ca = self.issue("ca.pem")

    def issue(self, ca_name: str) -> trustme.CA:
        """A fresh CA and a certificate for HOST from it, written over cert.pem and key.pem."""
        ca = trustme.CA()
        issued = ca.issue_cert(HOST)
        self.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(self.key))
        self.key.chmod(0o600)
        ca.cert_pem.write_to_path(str(self.base / ca_name))
        return ca


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def https_get(port: int, path: str, cafile: Path, token: str) -> tuple[str, bytes, str | None]:
    """One request with Python's ssl: (status line, body, negotiated ALPN protocol)."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["h2", "http/1.1"])
    head = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.sendall(head.encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        protocol = tls.selected_alpn_protocol()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    return head_bytes.split(b"\r\n")[0].decode(), body, protocol


async def test_tls_listener_read_by_curl_and_python_ssl_and_reloaded(pki: Pki) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (scripts/test installs it)"
    async with running(extra=CONSUMERS, tls_cert=f'"{pki.cert}"', tls_key=f'"{pki.key}"') as (_sim, proxy):
        assert proxy is not None
        port = proxy.port
        common = [curl, "-sS", "--cacert", str(pki.base / "ca.pem"), "--resolve", f"{HOST}:{port}:127.0.0.1"]
        streamed = await trio.run_process(
            [*common, "-N", "--compressed", "--max-time", "2", "-H", f"Authorization: Bearer {TEAM_TOKEN}",
             f"https://{HOST}:{port}/api/1/stream/s1"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert streamed.returncode == 28, streamed.stderr  # curl's "time is up": the stream did not end
        records = [line for line in streamed.stdout.split(b"\r\n") if line.startswith(b"{")]
        assert len(records) >= 20 and all(b'"hitIdLow"' in r for r in records)
        refused = await trio.run_process(
            [*common, "-o", "/dev/null", "-w", "%{http_code}", f"https://{HOST}:{port}/status"],
            capture_stdout=True, check=False,
        )  # fmt: skip
        assert refused.stdout == b"401"  # TLS does not replace the token

        status, body, protocol = await trio.to_thread.run_sync(
            https_get, port, "/status", pki.base / "ca.pem", OPS_TOKEN
        )
        assert status == "HTTP/1.1 200 OK" and protocol == "http/1.1" and b'"streams"' in body

        # Plain HTTP on the TLS port gets nothing, and the listener carries on.
        with trio.fail_after(5):
            plain = await trio.open_tcp_stream("127.0.0.1", port)
            await plain.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := await plain.receive_some(4096):
                answer += chunk
            await plain.aclose()
        assert b"HTTP/1.1 200" not in answer

        # A reload re-reads the files: new connections get the new certificate.
        pki.issue("ca2.pem")
        changes = await proxy.proxy.reload(proxy.proxy.config)
        assert f"TLS certificate re-read from {pki.cert}" in changes
        status, _, _ = await trio.to_thread.run_sync(https_get, port, "/healthz", pki.base / "ca2.pem", OPS_TOKEN)
        assert status == "HTTP/1.1 200 OK"
        with pytest.raises(ssl.SSLCertVerificationError):
            await trio.to_thread.run_sync(https_get, port, "/healthz", pki.base / "ca.pem", OPS_TOKEN)
        # Files that do not load keep the running certificate.
        pki.key.write_text("not a key")
        changes = await proxy.proxy.reload(proxy.proxy.config)
        assert any("TLS certificate not reloaded" in change for change in changes)
        status, _, _ = await trio.to_thread.run_sync(https_get, port, "/healthz", pki.base / "ca2.pem", OPS_TOKEN)
        assert status == "HTTP/1.1 200 OK"


async def test_status_command_pins_the_configured_certificate(pki: Pki) -> None:
    async with running(extra=CONSUMERS, tls_cert=f'"{pki.cert}"', tls_key=f'"{pki.key}"') as (_sim, proxy):
        assert proxy is not None
        config = pki.base / "server.toml"  # the command reads only [server]
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{proxy.port}"\ntls_cert = "{pki.cert}"\ntls_key = "{pki.key}"\n'
        )
        env = {**os.environ, "LSPROXY_TOKEN": OPS_TOKEN}
        command = [sys.executable, "-m", "lsproxy", "status", "--config", str(config)]
        shown = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False, env=env)
        assert shown.returncode == 0, shown.stderr
        assert b"streaming" in shown.stdout or b"connecting" in shown.stdout
        # Another certificate in the file than the one served: the pin refuses the connection.
        stranger = trustme.CA().issue_cert(HOST)
        other = pki.base / "other.pem"
        other.write_bytes(stranger.cert_chain_pems[0].bytes())
        stranger.private_key_pem.write_to_path(str(pki.base / "other-key.pem"))
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{proxy.port}"\ntls_cert = "{other}"\n'
            f'tls_key = "{pki.base / "other-key.pem"}"\n'
        )
        refused = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False, env=env)
        assert refused.returncode == 1 and b"CERTIFICATE_VERIFY_FAILED" in refused.stderr
