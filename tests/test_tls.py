"""The backend over TLS: ``amqps://`` with ``amqp_results_ssl``, against a private node.

A module fixture makes a throwaway PKI with openssl (a CA, a server certificate for
``localhost`` and 127.0.0.1 signed by it, and a second CA that signed nothing) and
starts a private RabbitMQ node (tests/private_node.py) with a TLS listener next to
its plain one.  The shared node on 127.0.0.1:5672 is never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Set, Tuple

import pytest
from celery import Celery, states

from celery_amqp_results import AMQPBackend, ResultBrokerError
from tests.broker import OPERATIONS, fail_fast
from tests.private_node import PrivateNode, TLSFiles

SECRET = "Sup3rSecretTlsPw"

#: A failing connect must give up well within this.  Measured: a wait fails at once
#: (its connect follows retry_policy); a store or read fails after ~6 s, since kombu's
#: ``default_channel`` reconnects by itself (broker_connection_timeout 4 s, 2 s apart)
#: whatever retry_policy says.
FAIL_FAST_SECONDS = 10.0


class PKI(NamedTuple):
    ca: Path
    server_cert: Path
    server_key: Path
    #: A CA that signed nothing the node presents.
    other_ca: Path


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(cwd: Path, name: str) -> Path:
    _openssl(cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=celery-amqp-results test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cwd / f"{name}.pem"


def make_pki(cwd: Path) -> PKI:
    """A CA, a server cert (CN and SAN ``localhost``, SAN 127.0.0.1) it signed, another CA."""
    ca = _make_ca(cwd, "ca")
    other_ca = _make_ca(cwd, "other-ca")
    (cwd / "server.ext").write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n")
    _openssl(cwd, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    _openssl(cwd, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return PKI(ca, cwd / "server.pem", cwd / "server.key", other_ca)


class TLSNode(NamedTuple):
    node: PrivateNode
    pki: PKI


@pytest.fixture(scope="module")
def tls() -> Iterator[TLSNode]:
    """A private node with a TLS listener (and its plain one); removed at the end."""
    certs = Path(tempfile.mkdtemp(prefix="car-tls-"))
    try:
        pki = make_pki(certs)
        node = PrivateNode(tls=TLSFiles(pki.ca, pki.server_cert, pki.server_key))
        try:
            node.start()
            yield TLSNode(node, pki)
        finally:
            node.destroy()
    finally:
        shutil.rmtree(certs, ignore_errors=True)


def tls_app(node: PrivateNode, ssl_options: Any, password: str = "guest") -> Celery:
    """An app whose result backend is ``amqps://`` on the node's TLS port."""
    url = f"amqps://guest:{password}@localhost:{node.tls_port}//"
    app = Celery("tls", broker=url, backend=url, set_as_current=False)
    app.conf.update(amqp_results_ssl=ssl_options, broker_connection_retry_on_startup=True)
    assert isinstance(app.backend, AMQPBackend)
    return app


def node_connections(node: PrivateNode) -> Dict[int, Dict[str, Any]]:
    """The node's client connections by client port: server port, TLS on, TLS version."""
    out = node.ctl("list_connections", "port", "peer_port", "ssl", "ssl_protocol",
                   "--formatter", "json", "-q")
    return {row["peer_port"]: row for row in json.loads(out or "[]")}


def my_connections(ports: Set[int]) -> List[Tuple[int, int]]:
    """``(local port, remote port)`` of this process's established TCP sockets to ``ports``."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = []
    for table in (Path("/proc/self/net/tcp"), Path("/proc/self/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            remote_port = int(remote.rsplit(":", 1)[1], 16)
            if inode in inodes and state == "01" and remote_port in ports:  # ESTABLISHED
                found.append((int(local.rsplit(":", 1)[1], 16), remote_port))
    return found


def ssl_forms(pki: PKI) -> Dict[str, Any]:
    return {
        # What the README/brief shows: Celery's broker_use_ssl style.
        "ca_certs+cert_reqs": {"ca_certs": str(pki.ca), "cert_reqs": ssl.CERT_REQUIRED},
        # Hostname checked too: kombu fills server_hostname=None with the URL's host
        # (which it has turned from localhost into 127.0.0.1, a SAN of the cert).
        "server_hostname=None": {"ca_certs": str(pki.ca), "cert_reqs": ssl.CERT_REQUIRED,
                                 "server_hostname": None},
        # py-amqp's other form: create_default_context(**context), hostname checked.
        "context": {"context": {"cafile": str(pki.ca), "check_hostname": True},
                    "server_hostname": "localhost"},
    }


FORMS = ["ca_certs+cert_reqs", "server_hostname=None", "context"]


@pytest.mark.parametrize("form", FORMS)
def test_store_read_wait_forget_over_tls(tls: TLSNode, form: str) -> None:
    node = tls.node
    app = tls_app(node, ssl_forms(tls.pki)[form])
    backend = app.backend
    try:
        task_id = str(uuid.uuid4())
        backend.mark_as_done(task_id, {"answer": 42})
        meta = backend.get_task_meta(task_id, cache=False)
        assert meta["status"] == states.SUCCESS and meta["result"] == {"answer": 42}

        later = str(uuid.uuid4())
        errors: List[BaseException] = []
        seen: Dict[str, Any] = {}

        def store_later() -> None:
            try:
                time.sleep(0.3)
                # The main thread waits now: its waiter's connection is open, and so
                # is the pooled one the stores and reads above went through.
                seen["mine"] = my_connections({node.port, node.tls_port})
                seen["node"] = node_connections(node)
                backend.mark_as_done(later, "late")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=store_later)
        began = time.monotonic()
        thread.start()
        # The store waits for two rabbitmqctl calls first: on a loaded machine each can
        # take seconds, so the deadline is generous (what is tested is that it waited).
        assert app.AsyncResult(later).get(timeout=120) == "late"
        waited = time.monotonic() - began
        thread.join(120)
        assert not errors, errors
        assert waited >= 0.25, waited

        # This process talked to the node only on the TLS port (pool and waiter: two
        # connections at least), and the node saw TLS on each of those connections.
        mine, seen_by_node = seen["mine"], seen["node"]
        assert len(mine) >= 2 and {port for _, port in mine} == {node.tls_port}, mine
        for local_port, _ in mine:
            row = seen_by_node.get(local_port)
            assert row is not None, (local_port, seen_by_node)
            assert row["port"] == node.tls_port and row["ssl"] is True, row
            assert str(row["ssl_protocol"]).startswith("tlsv1."), row

        app.AsyncResult(task_id).forget()
        assert backend.get_task_meta(task_id, cache=False)["status"] == states.PENDING
        assert backend.get_task_meta(later, cache=False)["status"] == states.SUCCESS
        backend.forget(later)
    finally:
        backend.close()


def failing_app(node: PrivateNode, ssl_options: Any, password: str = "guest") -> Celery:
    return fail_fast(tls_app(node, ssl_options, password))


def causes(exc: BaseException) -> List[BaseException]:
    """``exc`` and what it was raised from, outermost first."""
    chain: List[BaseException] = []
    current: Any = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def names_broker(message: str, node: PrivateNode) -> bool:
    """The message names the TLS listener (kombu turns ``localhost`` into 127.0.0.1)."""
    return "vhost '/'" in message and any(
        f"{host}:{node.tls_port}" in message for host in ("localhost", "127.0.0.1"))


def check_no_password(app: Celery, exc: BaseException, secret: str) -> None:
    message = str(exc)
    assert secret not in message and secret not in repr(exc), message
    assert f":{secret}@" not in app.backend.as_uri()


@pytest.mark.parametrize("operation", ["read", "store", "wait"])
def test_wrong_ca_fails_fast_and_clearly(tls: TLSNode, operation: str) -> None:
    node = tls.node
    app = failing_app(node, {"ca_certs": str(tls.pki.other_ca),
                             "cert_reqs": ssl.CERT_REQUIRED}, password=SECRET)
    try:
        began = time.monotonic()
        with pytest.raises(ResultBrokerError) as info:
            OPERATIONS[operation](app)
        took = time.monotonic() - began
        message = str(info.value)
        assert took < FAIL_FAST_SECONDS, (took, message)
        assert "CERTIFICATE_VERIFY_FAILED" in message, message
        assert names_broker(message, node), message
        assert any(isinstance(cause, ssl.SSLCertVerificationError)
                   for cause in causes(info.value)), repr(causes(info.value))
        # Retrying cannot fix a certificate: result_backend_always_retry must not try.
        assert info.value.retryable is False
        assert app.backend.exception_safe_to_retry(info.value) is False
        check_no_password(app, info.value, SECRET)
    finally:
        app.backend.close()


@pytest.mark.parametrize("operation", ["read", "store", "wait"])
def test_wrong_password_over_tls(tls: TLSNode, operation: str) -> None:
    node = tls.node
    app = failing_app(node, {"ca_certs": str(tls.pki.ca), "cert_reqs": ssl.CERT_REQUIRED},
                      password=SECRET)
    try:
        began = time.monotonic()
        with pytest.raises(ResultBrokerError) as info:
            OPERATIONS[operation](app)
        took = time.monotonic() - began
        message = str(info.value)
        assert took < FAIL_FAST_SECONDS, (took, message)
        assert "ACCESS_REFUSED" in message, message
        assert names_broker(message, node), message
        assert info.value.retryable is False
        assert app.backend.exception_safe_to_retry(info.value) is False
        check_no_password(app, info.value, SECRET)
    finally:
        app.backend.close()
