"""A private 3-node RabbitMQ cluster on this machine, for tests and benchmarks.

Each node is a :class:`tests.private_node.PrivateNode` (its own node name, AMQP
and Erlang distribution ports, data, logs and config under its own temp dir), so
the shared node on 127.0.0.1:5672 is never touched.  What makes them a cluster:

* one Erlang cookie, written into every node's private ``HOME`` (nodes and
  ``rabbitmqctl`` only talk to nodes with the same cookie);
* the same host (``@localhost`` short names) and epmd on 127.0.0.1, where each
  node registers its own distribution port, so the nodes find each other;
* ``rabbitmqctl join_cluster``: every node but the first is stopped
  (``stop_app``), joined to the first and started again (``start_app``).

All nodes boot in parallel; the joins run one at a time (see Cluster.start).  A node is
killed (``kill``, SIGKILL to its beam.smp by the pid RabbitMQ wrote, as a
crash would) or stopped (``stop``, SIGTERM to its process group) by pid only,
and can be started again with its data: it rejoins the cluster by itself.

``scripts/cluster`` starts and stops one from a shell (for benchmarks and by hand).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

from tests.private_node import PrivateNode, _first_line

T = TypeVar("T")

#: Seconds a node may take to boot: three Erlang VMs booting at once on two busy
#: cores take several times as long as one.
BOOT_TIMEOUT = 180.0


def in_parallel(calls: Sequence[Callable[[], T]]) -> List[T]:
    """Run ``calls`` in threads; their results in order, or the first error raised."""
    results: List[Any] = [None] * len(calls)
    errors: List[BaseException] = []

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            results[index] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, call), daemon=True)
               for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie nobody reaped yet (a killed beam.smp whose
    parent shell died too) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class ClusterNode(PrivateNode):
    """A private node that shares an Erlang cookie with its cluster's other nodes."""

    def __init__(self, cookie: str, index: int, *, extra_config: str = "") -> None:
        super().__init__(boot_timeout=BOOT_TIMEOUT, extra_config=extra_config)
        self.index = index
        path = self.base / "home" / ".erlang.cookie"
        path.chmod(0o600)
        path.write_text(cookie)
        path.chmod(0o400)

    @property
    def beam_pid(self) -> Optional[int]:
        """The OS pid of this node's Erlang VM, as RabbitMQ wrote it (None if unknown)."""
        try:
            return int((self.base / "rabbitmq.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM by pid, as a crash would; data is kept.

        Then what is left of its process group (the ``rabbitmq-server`` shell)
        goes too, and the pid file is removed so a later start writes a fresh one.
        Returns once the VM has exited.
        """
        proc = self.proc
        if proc is None:
            return
        pid = self.beam_pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_group(proc.pid)
        proc.wait()
        # SIGKILL is delivered asynchronously: return once the VM is really gone.
        deadline = time.monotonic() + 10
        while pid is not None and process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.proc = None
        (self.base / "rabbitmq.pid").unlink(missing_ok=True)


class Cluster:
    """``size`` private nodes joined into one RabbitMQ cluster (see the module docstring).

    Use as a context manager, or ``start()`` and ``destroy()``.
    """

    def __init__(self, size: int = 3, *, extra_config: str = "") -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, got {size}")
        cookie = uuid.uuid4().hex.upper()
        self.nodes: List[ClusterNode] = []
        try:
            for index in range(size):
                self.nodes.append(self._new_node(cookie, index, extra_config))
        except BaseException:
            self.destroy()
            raise
        #: Seconds the last start() took: boot, join, every node running in the cluster.
        self.last_start_seconds: Optional[float] = None
        #: Seconds the last stop() took, until every node's process had exited.
        self.last_stop_seconds: Optional[float] = None

    def _new_node(self, cookie: str, index: int, extra_config: str) -> ClusterNode:
        taken = {port for node in self.nodes for port in (node.port, node.dist_port)}
        for _ in range(20):
            node = ClusterNode(cookie, index, extra_config=extra_config)
            if not {node.port, node.dist_port} & taken:
                return node
            node.destroy()  # the kernel handed out a port another node has
        raise RuntimeError("no distinct ports found for a cluster node")

    # -- addresses ---------------------------------------------------------------------------

    @property
    def urls(self) -> List[str]:
        """One ``amqp://`` URL per node, vhost ``/``, in node order."""
        return [node.url for node in self.nodes]

    def failover_url(self, first: int = 0) -> str:
        """Celery's ``;``-separated failover URL of every node, starting with node ``first``."""
        urls = self.urls
        return ";".join(urls[first:] + urls[:first])

    @property
    def seed(self) -> ClusterNode:
        return self.nodes[0]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Boot every node, join them to the first one, wait until all run together."""
        began = time.monotonic()
        fresh = [node for node in self.nodes if not node.running]
        in_parallel([node.start for node in fresh])
        # One join at a time: concurrent joins to one seed contend for its schema
        # lock, and on a loaded machine one of them failed (cannot_start_mnesia).
        for node in fresh:
            if node is not self.seed and not self._joined(node):
                self._join(node)
        self.wait_until_running(list(range(len(self.nodes))))
        self.last_start_seconds = time.monotonic() - began
        return self

    def _joined(self, node: ClusterNode) -> bool:
        return self.seed.nodename in self.running_nodes(node)

    def _join(self, node: ClusterNode, attempts: int = 5) -> None:
        """Join ``node`` to the seed.  A failed attempt (seen on a loaded machine:
        ``start_app`` exited 69, then ``reset`` failed with cannot_start_mnesia) is
        followed by a ``force_reset`` of the stopped node and a longer pause."""
        error: Optional[subprocess.SubprocessError] = None
        how = ""
        for attempt in range(attempts):
            try:
                self.seed.ctl("await_startup")
                node.ctl("await_startup")
                node.ctl("stop_app")
                if attempt:
                    node.ctl("force_reset")
                node.ctl("join_cluster", self.seed.nodename)
                node.ctl("start_app")
                return
            except subprocess.CalledProcessError as exc:
                error = exc
                how = f"exited {exc.returncode}: {_first_line(exc.stderr or exc.stdout)}"
            except subprocess.TimeoutExpired as exc:
                # A join that hangs (the seed busy on a loaded machine) is tried again.
                error = exc
                how = f"did not finish in {exc.timeout} s"
            time.sleep(1 + 2 * attempt)
        assert error is not None
        command = " ".join(map(str, getattr(error, "cmd", [])[3:]))
        raise RuntimeError(
            f"{node.nodename} could not join {self.seed.nodename} in {attempts} attempts; "
            f"last: {command} {how}\n{node._log_summary()}") from error

    def running_nodes(self, via: Optional[ClusterNode] = None) -> List[str]:
        """Names of the cluster's running nodes, as ``via`` (default: a running node) sees it."""
        via = via or next(node for node in self.nodes if node.running)
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def wait_until_running(self, indexes: Sequence[int], timeout: float = 60.0) -> None:
        """Wait until exactly the nodes at ``indexes`` run in the cluster."""
        wanted = {self.nodes[i].nodename for i in indexes}
        deadline = time.monotonic() + timeout
        while True:
            seen: set = set()
            try:
                seen = set(self.running_nodes(self.nodes[indexes[0]]))
            except subprocess.SubprocessError:
                pass
            if seen == wanted:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster runs {sorted(seen)}, not {sorted(wanted)}, "
                                   f"after {timeout} s")
            time.sleep(0.5)

    def kill(self, index: int) -> float:
        """SIGKILL node ``index`` by pid (data kept); the monotonic time it died."""
        self.nodes[index].kill()
        return time.monotonic()

    def start_node(self, index: int) -> None:
        """Start node ``index`` again with its data; wait until it runs in the cluster."""
        self.nodes[index].start()
        self.wait_until_running([i for i, node in enumerate(self.nodes) if node.running])

    def stop(self) -> None:
        """Stop every node by pid (SIGTERM to its process group; SIGKILL if it lingers)."""
        began = time.monotonic()
        in_parallel([node.stop for node in self.nodes])
        self.last_stop_seconds = time.monotonic() - began

    def destroy(self) -> None:
        """Stop every node and remove their temp dirs."""
        began = time.monotonic()
        in_parallel([node.destroy for node in self.nodes])
        self.last_stop_seconds = time.monotonic() - began

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- looking at queues -------------------------------------------------------------------

    def queues(self, vhost: str = "/", prefix: str = "") -> List[Dict[str, Any]]:
        """Every queue of ``vhost`` whose name starts with ``prefix``, asked of running nodes.

        Each row has ``name``, ``type``, ``messages``, ``leader`` and ``members``
        (quorum), and ``node``: the node a classic queue lives on (``list_queues
        --local`` of each node; its pid does not name the node), or a quorum
        queue's leader.  A classic queue on a node that is down has no row.
        """
        rows: Dict[str, Dict[str, Any]] = {}
        for node in self.nodes:
            if not node.running:
                continue
            out = node.ctl("list_queues", "-p", vhost, "--local", "name", "type", "leader",
                           "members", "messages", "--formatter", "json", "-q", timeout=300)
            for row in json.loads(out or "[]"):
                if not row["name"].startswith(prefix):
                    continue
                if row.get("type") == "quorum":
                    row["node"] = row.get("leader") or None
                else:
                    row["node"] = node.nodename
                rows.setdefault(row["name"], row)
        return list(rows.values())

    def describe(self) -> Dict[str, Any]:
        """What a shell user needs: node names, pids, ports, URLs."""
        return {
            "nodes": [{"name": node.nodename, "port": node.port, "dist_port": node.dist_port,
                       "pid": node.proc.pid if node.proc else None, "beam_pid": node.beam_pid,
                       "dir": str(node.base), "url": node.url} for node in self.nodes],
            "failover_url": self.failover_url(),
        }
