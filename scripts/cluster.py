"""Start, inspect, kill and stop a private 3-node RabbitMQ cluster on this machine.

Run through ``scripts/cluster`` (which picks the project's virtualenv)::

    scripts/cluster start              # boots, joins, prints URLs; nodes keep running
    scripts/cluster status
    scripts/cluster kill 0             # SIGKILL node 0's Erlang VM by pid (data kept)
    scripts/cluster restart 0          # start it again: it rejoins the cluster
    scripts/cluster stop               # stop every node by pid, remove their files
    scripts/cluster run -- CMD ARGS    # start, run CMD with CAR_CLUSTER_URL set, stop

The nodes are ``tests/cluster.py``'s (each with its own name, ports and data dir,
one shared Erlang cookie, joined with ``rabbitmqctl join_cluster``); the shared
node on 127.0.0.1:5672 is never touched.  What a later command needs (node
names, pids, ports, dirs) is kept in ``--state`` (default /tmp/car-cluster.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster import Cluster, process_alive  # noqa: E402

DEFAULT_STATE = Path("/tmp/car-cluster.json")

#: Seconds a node gets to shut down after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pids: List[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(process_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _load(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"no cluster recorded in {path} (start one with: scripts/cluster start)")


def _save(path: Path, cluster: Cluster, started: float) -> Dict[str, Any]:
    state = cluster.describe()
    state["env"] = {node.nodename: node.env() for node in cluster.nodes}
    state["start_seconds"] = started
    path.write_text(json.dumps(state, indent=2))
    return state


def _print_ready(state: Dict[str, Any], path: Path) -> None:
    for index, node in enumerate(state["nodes"]):
        print(f"node {index}: {node['name']}  amqp port {node['port']}  pid {node['pid']} "
              f"(beam {node['beam_pid']})  {node['dir']}")
    print(f"ready in {state['start_seconds']:.1f} s; state in {path}")
    print(f"export CAR_CLUSTER_URL='{state['failover_url']}'")


def start(args: argparse.Namespace) -> int:
    path: Path = args.state
    if path.exists():
        sys.exit(f"{path} already records a cluster: scripts/cluster stop --state {path}")
    cluster = Cluster(args.size, extra_config="\n".join(args.config))
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    # The nodes run in their own sessions: they outlive this process.
    _print_ready(_save(path, cluster, cluster.last_start_seconds or 0.0), path)
    return 0


def stop(args: argparse.Namespace) -> int:
    """Stop every node by pid: SIGTERM to its process group, SIGKILL if it lingers."""
    path: Path = args.state
    state = _load(path)
    began = time.monotonic()
    pids = [node["pid"] for node in state["nodes"] if node["pid"]]
    beams = [node["beam_pid"] for node in state["nodes"] if node["beam_pid"]]
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    if not _wait_gone(pids + beams, STOP_TIMEOUT):
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)
        for pid in beams:
            _signal_group(pid, signal.SIGKILL)
        _wait_gone(pids + beams, 10)
    for node in state["nodes"]:
        shutil.rmtree(node["dir"], ignore_errors=True)
    path.unlink()
    print(f"stopped {len(pids)} nodes in {time.monotonic() - began:.1f} s")
    return 0


def kill(args: argparse.Namespace) -> int:
    """SIGKILL one node's Erlang VM by pid, as a crash would (its data is kept)."""
    path: Path = args.state
    state = _load(path)
    node = state["nodes"][args.index]
    beam = _beam_pid(node)
    if beam is None or not process_alive(beam):
        sys.exit(f"node {args.index} is not running")
    os.kill(beam, signal.SIGKILL)
    _signal_group(node["pid"], signal.SIGKILL)
    _wait_gone([beam, node["pid"]], 10)
    (Path(node["dir"]) / "rabbitmq.pid").unlink(missing_ok=True)
    node["pid"] = node["beam_pid"] = None
    path.write_text(json.dumps(state, indent=2))
    print(f"killed node {args.index} ({node['name']}, beam pid {beam})")
    return 0


def restart(args: argparse.Namespace) -> int:
    """Start a killed node again with its data: it rejoins the cluster."""
    path: Path = args.state
    state = _load(path)
    node = state["nodes"][args.index]
    if node["pid"] and process_alive(node["pid"]):
        sys.exit(f"node {args.index} is running (pid {node['pid']})")
    env = state["env"][node["name"]]
    began = time.monotonic()
    with open(Path(node["dir"]) / "log" / "console.log", "ab") as log:
        proc = subprocess.Popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], cwd=node["dir"],
                                env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    node["pid"] = proc.pid  # recorded at once: "stop" must find it whatever happens next
    path.write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + 120
    while subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", node["name"],
                          "await_startup", "--timeout", "60"],
                         env=env, capture_output=True).returncode != 0:
        # await_startup fails at once while the Erlang node itself is not up yet.
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"node {args.index} did not start; see {node['dir']}/log")
        time.sleep(0.5)
    node["beam_pid"] = _beam_pid(node)
    path.write_text(json.dumps(state, indent=2))
    print(f"node {args.index} back in {time.monotonic() - began:.1f} s (pid {proc.pid})")
    return 0


def _beam_pid(node: Dict[str, Any]) -> Any:
    try:
        return int((Path(node["dir"]) / "rabbitmq.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def status(args: argparse.Namespace) -> int:
    state = _load(args.state)
    for index, node in enumerate(state["nodes"]):
        alive = bool(node["beam_pid"]) and process_alive(node["beam_pid"])
        print(f"node {index}: {node['name']} port {node['port']} "
              f"{'running' if alive else 'down'} (pid {node['pid']})")
    running = next((n for n in state["nodes"] if n["beam_pid"] and process_alive(n["beam_pid"])),
                   None)
    if running is not None:
        out = subprocess.run(
            ["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", running["name"], "cluster_status",
             "--formatter", "json"], env=state["env"][running["name"]],
            capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            print("running in the cluster:", ", ".join(json.loads(out.stdout)["running_nodes"]))
    print(f"export CAR_CLUSTER_URL='{state['failover_url']}'")
    return 0


def run(args: argparse.Namespace) -> int:
    """Start a cluster, run a command with its URLs in the environment, then stop it."""
    command = [part for part in args.command if part != "--"]
    if not command:
        sys.exit("usage: scripts/cluster run -- COMMAND [ARGS...]")
    with Cluster(args.size, extra_config="\n".join(args.config)) as cluster:
        print(f"cluster ready in {cluster.last_start_seconds:.1f} s", flush=True)
        env = dict(os.environ, CAR_CLUSTER_URL=cluster.failover_url(),
                   CAR_CLUSTER_URLS=" ".join(cluster.urls))
        code = subprocess.call(command, env=env)
    print(f"cluster stopped in {cluster.last_stop_seconds:.1f} s", flush=True)
    return code


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE,
                        help=f"where the running cluster is recorded (default {DEFAULT_STATE})")
    commands = parser.add_subparsers(dest="what", required=True)
    for name, func in (("start", start), ("run", run)):
        sub = commands.add_parser(name)
        sub.add_argument("--size", type=int, default=3, help="number of nodes (default 3)")
        sub.add_argument("--config", action="append", default=[],
                         help="a rabbitmq.conf line for every node, e.g. "
                              "'queue_leader_locator = balanced' (repeatable)")
        sub.set_defaults(func=func)
    commands.choices["run"].add_argument("command", nargs=argparse.REMAINDER)
    for name, func in (("stop", stop), ("status", status)):
        commands.add_parser(name).set_defaults(func=func)
    for name, func in (("kill", kill), ("restart", restart)):
        sub = commands.add_parser(name)
        sub.add_argument("index", type=int, help="node number, from 0")
        sub.set_defaults(func=func)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
