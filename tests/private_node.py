"""A private RabbitMQ node for tests that stop and restart the broker.

The shared node (``rabbit@localhost`` on 127.0.0.1:5672, data in /var/lib/rabbitmq)
is never touched: the private node has its own node name, its own AMQP and
Erlang distribution ports, its own data, log, pid, plugins and config files under
one temp dir, and its own ``HOME`` there (so its Erlang cookie is private too).

Every file the installed ``rabbitmq-server`` 3.10 would otherwise read from
/etc/rabbitmq is redirected into the temp dir: /etc/rabbitmq/rabbitmq-env.conf
sets ``NODENAME=rabbit@localhost`` and /etc/rabbitmq/rabbitmq.conf sets
``listeners.tcp.local = 127.0.0.1:5672``, either of which would make the private
node clash with the shared one.

With ``CAR_TEST_RABBITMQ_ROOT`` set (see tests/broker.py), the node runs from that
folder's RabbitMQ installation instead (``scripts/rabbitmq4``'s Debian trixie folder
with RabbitMQ 4.0): its temp dir is inside the folder, it runs there with
``chroot --userspec rabbitmq:rabbitmq`` and registers with that folder's epmd
(``CAR_TEST_EPMD_PORT``), so RabbitMQ 4 private nodes and clusters work like 3.10 ones.

``stop()`` keeps the data dir, so ``start()`` brings back the same node with its
durable queues and persistent messages.  ``destroy()`` stops it and removes it all.

Optional: ``tls=TLSFiles(...)`` adds a TLS listener on 127.0.0.1 on a port of its own
(``tls_port``, ``tls_url``) next to the plain one; ``extra_config`` is appended to the
node's rabbitmq.conf as given.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import amqp

from tests import broker

#: The real start script, not /usr/sbin/rabbitmq-server: that wrapper switches to
#: the ``rabbitmq`` user, cds to /var/lib/rabbitmq and resets HOME.
RABBITMQ_SBIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_SBIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_SBIN / "rabbitmqctl"

HOST = "127.0.0.1"

#: Ports a private node must never take: the shared node's AMQP and distribution
#: ports, epmd, and the range rabbitmqctl picks its own distribution port from.
RESERVED_PORTS = {4369, 5672, 25672, *range(35672, 35683),
                  # the same for scripts/rabbitmq4's node (its defaults), and both APIs
                  4381, 5681, 25681, *range(35681, 35692), 15672, 15681}


def free_port(avoid: Optional[set] = None) -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    avoid = RESERVED_PORTS | set(avoid or ())
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise RuntimeError("no free TCP port found")


def _first_line(text: str, width: int = 300) -> str:
    """The first non-empty line of a tool's output, cut to ``width`` (Erlang errors are long)."""
    line = next((line for line in (text or "").splitlines() if line.strip()), "")
    return line if len(line) <= width else line[:width] + " ..."


def _error_lines(path: Path, lines: int = 8, width: int = 200) -> str:
    """The last ``lines`` lines of a node log that report an error, each cut to ``width``."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    found = [line if len(line) <= width else line[:width] + " ..."
             for line in text.splitlines() if "[error]" in line or "error" in line.lower()[:80]]
    return "\n".join(found[-lines:]) or "<no error lines>"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(line if len(line) <= 300 else line[:300] + " ..."
                     for line in text.splitlines()[-lines:])


class TLSFiles(NamedTuple):
    """PEM files of a node's TLS listener: the CA it trusts, its certificate and key."""

    cacertfile: Path
    certfile: Path
    keyfile: Path


class PrivateNode:
    """A RabbitMQ node of this test run alone, started in the foreground.

    Use as a context manager (``with PrivateNode() as node: ...``, destroyed on
    exit) or call ``start()`` / ``stop()`` / ``destroy()`` yourself.
    """

    def __init__(self, boot_timeout: float = 60.0, stop_timeout: float = 30.0, *,
                 tls: Optional[TLSFiles] = None, extra_config: str = "",
                 management: bool = False) -> None:
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.nodename = f"car-{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port()
        self.dist_port = free_port({self.port})
        self.tls = tls
        #: Port of the TLS listener (on 127.0.0.1), or None without ``tls``.
        self.tls_port: Optional[int] = (
            free_port({self.port, self.dist_port}) if tls is not None else None)
        #: Port of the management API (on 127.0.0.1), or None without ``management``.
        self.management_port: Optional[int] = (
            free_port({self.port, self.dist_port, self.tls_port or 0}) if management else None)
        self.extra_config = extra_config
        #: The folder of the RabbitMQ installation this node runs from (a chroot), or
        #: None for the machine's own installation.
        self.root: Optional[Path] = Path(broker.RABBITMQ_ROOT) if broker.RABBITMQ_ROOT else None
        if self.root is not None and not (self.root / "proc" / "self").exists():
            raise RuntimeError(f"{self.root}/proc is not mounted: start that installation's "
                               "node first (scripts/rabbitmq4 start)")
        self.base = Path(tempfile.mkdtemp(
            prefix="car-rabbit-", dir=None if self.root is None else self.root / "tmp"))
        self.proc: Optional[subprocess.Popen] = None
        #: Seconds the last start() took until AMQP connections were accepted.
        self.last_start_seconds: Optional[float] = None
        #: Seconds the last stop() took until the node's process had exited.
        self.last_stop_seconds: Optional[float] = None
        self._starts = 0
        self._write_files()

    # -- files -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}//"

    @property
    def tls_url(self) -> str:
        """``amqps://`` URL of the TLS listener (host ``localhost``, as its cert names)."""
        if self.tls_port is None:
            raise RuntimeError("this node has no TLS listener (PrivateNode(tls=...))")
        return f"amqps://guest:guest@localhost:{self.tls_port}//"

    @property
    def management_url(self) -> str:
        """``http://`` URL of the management API, as amqp_results_management_url takes it."""
        if self.management_port is None:
            raise RuntimeError("this node has no management API (PrivateNode(management=True))")
        return f"http://guest:guest@{HOST}:{self.management_port}/"

    @property
    def log_dir(self) -> Path:
        return self.base / "log"

    @property
    def console_log(self) -> Path:
        """stdout and stderr of rabbitmq-server (all starts, appended)."""
        return self.log_dir / "console.log"

    @property
    def node_log(self) -> Path:
        return self.log_dir / f"{self.nodename}.log"

    def _inside(self, path: Path) -> str:
        """``path`` as the node sees it (inside its installation's folder, if any)."""
        if self.root is None:
            return str(path)
        return "/" + str(path.relative_to(self.root))

    def _command(self, program: Path, *args: str) -> List[str]:
        """argv that runs ``program`` of this node's installation (chrooted if need be)."""
        if self.root is None:
            return [str(program), *args]
        return ["chroot", "--userspec=rabbitmq:rabbitmq", str(self.root), str(program), *args]

    def _own_files(self) -> None:
        """Hand the temp dir to the installation's rabbitmq user (a chrooted node only)."""
        if self.root is None:
            return
        subprocess.run(["chroot", str(self.root), "chown", "-R", "rabbitmq:rabbitmq",
                        self._inside(self.base)], check=True, capture_output=True, timeout=60)

    def _tls_file(self, path: Path) -> str:
        """A TLS file's path for the node's config, copied into the temp dir if the node
        runs chrooted and the file is outside its folder."""
        if self.root is None:
            return str(path)
        copy = self.base / "tls" / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, copy)
        return self._inside(copy)

    def _write_files(self) -> None:
        for sub in ("mnesia", "log", "home", "conf.d"):
            (self.base / sub).mkdir()
        plugins = "rabbitmq_management" if self.management_port is not None else ""
        (self.base / "enabled_plugins").write_text(f"[{plugins}].\n")
        (self.base / "rabbitmq-env.conf").write_text("# private test node: nothing here\n")
        config = (f"listeners.tcp.local = {HOST}:{self.port}\n"
                  "log.console = false\n"
                  "log.file.level = info\n")
        if self.tls is not None:
            config += (f"listeners.ssl.local = {HOST}:{self.tls_port}\n"
                       f"ssl_options.cacertfile = {self._tls_file(self.tls.cacertfile)}\n"
                       f"ssl_options.certfile = {self._tls_file(self.tls.certfile)}\n"
                       f"ssl_options.keyfile = {self._tls_file(self.tls.keyfile)}\n"
                       "ssl_options.verify = verify_none\n"
                       "ssl_options.fail_if_no_peer_cert = false\n")
        if self.management_port is not None:
            config += (f"management.tcp.ip = {HOST}\n"
                       f"management.tcp.port = {self.management_port}\n")
        if self.extra_config:
            config += self.extra_config.rstrip("\n") + "\n"
        (self.base / "rabbitmq.conf").write_text(config)
        cookie = self.base / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)

    def env(self) -> Dict[str, str]:
        """The environment rabbitmq-server and rabbitmqctl run with for this node."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("RABBITMQ_", "ERL_"))
               and key not in {"NODENAME", "NODE_PORT", "CONFIG_FILE", "MNESIA_BASE",
                               "LOG_BASE", "ENABLED_PLUGINS_FILE", "PLUGINS_DIR"}}
        base = Path(self._inside(self.base))
        env.update(
            HOME=str(base / "home"),  # its own ~/.erlang.cookie
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(base / "conf.d"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_MOTD_FILE=str(base / "motd"),
            # As the shared node's env file does: distribution on loopback only.
            ERL_EPMD_ADDRESS=HOST,
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
            # rabbitmqctl's VM without scheduler busy-waiting, as the server runs: with
            # Erlang 27's default one call took 15-25 s on a loaded 2-core machine
            # (scripts/rabbitmq4 has the figures).
            RABBITMQ_CTL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none",
        )
        if broker.EPMD_PORT is not None:
            env["ERL_EPMD_PORT"] = str(broker.EPMD_PORT)
        return env

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PrivateNode:
        """Start the node (same name, ports and data as before) and wait for AMQP."""
        if self.running:
            return self
        began = time.monotonic()
        self._own_files()
        self._starts += 1
        with open(self.console_log, "ab") as log:
            log.write(f"\n===== start #{self._starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self._command(RABBITMQ_SERVER), cwd=self.base, env=self.env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            self._wait_until_ready(began + self.boot_timeout)
        except BaseException:
            self._kill()
            raise
        self.last_start_seconds = time.monotonic() - began
        return self

    def _wait_until_ready(self, deadline: float) -> None:
        last_error: Optional[BaseException] = None
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"private RabbitMQ node {self.nodename} exited with "
                    f"{self.proc.returncode} while booting\n{self._logs()}")
            try:
                conn = amqp.Connection(f"{HOST}:{self.port}", userid="guest",
                                       password="guest", virtual_host="/",
                                       connect_timeout=1)
                conn.connect()
                conn.close()
                if self.tls_port is not None:
                    # Started with the plain listener; a TCP accept is enough here.
                    socket.create_connection((HOST, self.tls_port), timeout=1).close()
                if self.management_port is not None:
                    # The management plugin starts after the AMQP listener.
                    socket.create_connection((HOST, self.management_port), timeout=1).close()
                return
            except Exception as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"private RabbitMQ node {self.nodename} did not accept AMQP on port "
                    f"{self.port} within {self.boot_timeout} s (last error: {last_error!r})"
                    f"\n{self._logs()}")
            time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the node by its pid (data kept); SIGKILL if it does not exit in time.

        SIGTERM goes to the node's process group: the ``rabbitmq-server`` shell
        (forwards it to beam.smp and waits) and beam.smp itself, which shuts down
        cleanly ("SIGTERM received - shutting down", message stores closed).
        Whatever is left in the group afterwards is killed.
        """
        proc = self.proc
        if proc is None:
            return
        began = time.monotonic()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._kill_group(proc.pid)
        self.proc = None
        self.last_stop_seconds = time.monotonic() - began

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self._kill_group(proc.pid)
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait()
        self.proc = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """SIGKILL what is left of the process group the node was started in."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the node and remove its temp dir (data, logs, cookie)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivateNode:
        try:
            return self.start()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- tools -------------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <this node> ARGS`` (with this node's cookie); its stdout."""
        return subprocess.run(
            self._command(RABBITMQCTL, "-n", self.nodename, *args), env=self.env(), cwd=self.base,
            check=True, capture_output=True, text=True, timeout=timeout).stdout

    def queues(self) -> List[Dict[str, object]]:
        """Every queue of vhost ``/`` with its message count, durability and arguments."""
        out = self.ctl("list_queues", "-p", "/", "name", "messages", "durable",
                       "arguments", "--formatter", "json", "-q")
        return json.loads(out or "[]")

    def _log_summary(self) -> str:
        """The few log lines that explain a failure, and where the whole logs are."""
        return (f"--- error lines of {self.node_log} (whole logs: {self.console_log}, "
                f"{self.node_log}) ---\n{_error_lines(self.node_log)}")

    def _logs(self) -> str:
        return (f"--- tail of {self.console_log} ---\n{_tail(self.console_log)}\n"
                f"--- tail of {self.node_log} ---\n{_tail(self.node_log)}")
