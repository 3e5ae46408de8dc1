"""CPU seconds the servers spend, read from their own processes (``/proc/<pid>/stat``).

benchmarks/run.py samples this around each figure and reports it per 1000 results, so a
client that gets faster by making the broker work harder cannot hide it:

* ``rabbitmq``: the RabbitMQ node's Erlang VM (its pid from ``os:getpid()`` through
  ``rabbitmqctl eval``; a chrooted 4.0 node shares the host's pid numbers);
* ``redis``: ``redis-server`` (its pid from ``INFO server``), the result store of the
  ``redis`` peer only; for the others it only answers the benchmark's flushes.

Both servers are shared with whatever else runs on the machine: a figure taken while
other clients use them includes their work too.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

#: Clock ticks per second, the unit of utime and stime in /proc/<pid>/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


class ServerCpu:
    """The servers' CPU clocks; a server whose pid is unknown is left out (None)."""

    def __init__(self, pids: Dict[str, Optional[int]]) -> None:
        #: Server name -> its pid (None: not found, not sampled).
        self.pids = pids

    @classmethod
    def find(cls, rabbitmqctl: Callable[..., str], redis_client: Any) -> ServerCpu:
        """The RabbitMQ node's and redis-server's pids, each None if it cannot be found."""
        pids: Dict[str, Optional[int]] = {"rabbitmq": None, "redis": None}
        try:
            pids["rabbitmq"] = int(rabbitmqctl("eval", "os:getpid().", timeout=60)
                                   .strip().strip('"'))
        except Exception:  # reported as "no figure", not fatal
            pass
        try:
            pids["redis"] = int(redis_client.info("server")["process_id"])
        except Exception:  # likewise
            pass
        for name, pid in pids.items():
            if pid is not None and not os.path.exists(f"/proc/{pid}/stat"):
                pids[name] = None  # a server on another host (or in another pid namespace)
        return cls(pids)

    def sample(self) -> Dict[str, float]:
        """CPU seconds of every known server so far."""
        out = {}
        for name, pid in self.pids.items():
            if pid is None:
                continue
            try:
                out[name] = process_cpu_seconds(pid)
            except OSError:
                self.pids[name] = None  # restarted or stopped: no more figures from it
        return out

    @staticmethod
    def per_1000(before: Dict[str, float], after: Dict[str, float],
                 results: int) -> Dict[str, float]:
        """CPU seconds each server spent between two samples, per 1000 ``results``."""
        if results <= 0:
            return {}
        return {name: (after[name] - before[name]) * 1000 / results
                for name in before if name in after}
