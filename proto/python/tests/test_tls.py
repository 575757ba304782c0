"""connect() over TCP: plain http:// on loopback, https:// with TLS and with
mutual TLS, against the agent's TCP listener on 127.0.0.1 (certificates made
with the openssl CLI)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import berth_client

from conftest import AgentFactory, free_port


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"openssl {' '.join(args)}: {out.stderr}"


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, ca: str, name: str, subject: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _leaf(
        d, "ca", "server", "/CN=127.0.0.1",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )  # fmt: skip
    client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    _leaf(d, "ca", "client", "/CN=scheduler/O=berth-test", client_ext)
    # A client certificate signed by a CA the agent does not trust.
    _ca(d, "other-ca")
    _leaf(d, "other-ca", "other", "/CN=intruder", client_ext)
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
        other_cert=d / "other.pem",
        other_key=d / "other.key",
    )


def _tls_agent(make_agent: AgentFactory, pki: Pki, mutual: bool):  # type: ignore[no-untyped-def]
    port = free_port()
    api = f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
    if mutual:
        api += f'client_ca = "{pki.ca}"\n'
    else:
        # TLS without client certificates: on loopback, on purpose only.
        api += "insecure_loopback = true\n"
    return make_agent(listen=f"127.0.0.1:{port}", api_extra=api).start(), port


def test_plain_http_on_loopback(make_agent: AgentFactory) -> None:
    port = free_port()
    agent = make_agent(listen=f"127.0.0.1:{port}", api_extra="insecure_loopback = true\n").start()
    with berth_client.connect(f"http://127.0.0.1:{port}") as c:
        assert c.node().node_id == agent.node_id


def test_tls(make_agent: AgentFactory, pki: Pki) -> None:
    agent, port = _tls_agent(make_agent, pki, mutual=False)
    addr = f"https://127.0.0.1:{port}"
    with berth_client.connect(addr, ca=pki.ca) as c:
        assert c.node().node_id == agent.node_id
    # PEM bytes work as well as paths.
    with berth_client.connect(addr, ca=pki.ca.read_bytes()) as c:
        assert c.node().node_id == agent.node_id
    # Without the CA (system roots only) the agent's certificate is not trusted.
    with berth_client.connect(addr) as c:
        with pytest.raises(berth_client.Unavailable):
            c.node(timeout=10)
    # Nor with another CA.
    with berth_client.connect(addr, ca=pki.other_ca) as c:
        with pytest.raises(berth_client.Unavailable):
            c.node(timeout=10)
    # Plain text to a TLS listener does not get an answer either.
    with berth_client.connect(f"http://127.0.0.1:{port}") as c:
        with pytest.raises(berth_client.BerthError):
            c.node(timeout=10)


def test_mutual_tls(make_agent: AgentFactory, pki: Pki) -> None:
    agent, port = _tls_agent(make_agent, pki, mutual=True)
    addr = f"https://127.0.0.1:{port}"
    with berth_client.connect(addr, ca=pki.ca, cert=pki.client_cert, key=pki.client_key) as c:
        assert c.node().node_id == agent.node_id
        assert c.list_tasks() == []
    # No client certificate: refused at the handshake.
    with berth_client.connect(addr, ca=pki.ca) as c:
        with pytest.raises(berth_client.Unavailable):
            c.node(timeout=10)
    # A client certificate of a CA the agent does not trust: refused too.
    with berth_client.connect(addr, ca=pki.ca, cert=pki.other_cert, key=pki.other_key) as c:
        with pytest.raises(berth_client.Unavailable):
            c.node(timeout=10)


def test_mutual_tls_needs_both_cert_and_key(pki: Pki) -> None:
    with pytest.raises(ValueError):
        berth_client.connect("https://127.0.0.1:1", ca=pki.ca, cert=pki.client_cert)
