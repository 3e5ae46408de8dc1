"""Broker operations per chord header task, counted on the wire, for chords of N parts.

Runs Celery's chord protocol by hand in this process, on a fresh vhost:
``apply_chord`` and ``set_chord_size`` as a client does, then one
``on_chord_part_return`` per header task as the worker does after storing its
result (the result stores themselves are not counted: they are the same with
or without chords).  Every AMQP method this process sends is counted by name,
and so are the round trips (methods that wait for a reply, and publisher
confirms).  The body goes to a queue nobody consumes; the script checks it was
sent exactly once per chord.

    .venv/bin/python benchmarks/chord_ops.py [--sizes 10,100,1000] [--reps 3]
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Counter, Dict, List

import amqp
from amqp import spec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery import Celery, signature  # noqa: E402
from celery.result import AsyncResult  # noqa: E402
from tests import broker  # noqa: E402

#: Methods after which py-amqp waits for the broker's reply (or, for a publish
#: on a confirm channel, for the confirm): each is a round trip.
SYNCHRONOUS = {
    spec.Queue.Declare, spec.Queue.Delete, spec.Queue.Purge, spec.Basic.Get,
    spec.Basic.Consume, spec.Basic.Qos, spec.Channel.Open, spec.Channel.Close,
    spec.Basic.Publish,
}
NAMES = {value: name for name, value in vars(spec).items()
         if isinstance(value, tuple) and len(value) == 2}
for cls in (spec.Queue, spec.Basic, spec.Channel, spec.Exchange, spec.Confirm):
    for attr, value in vars(cls).items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
            NAMES[value] = f"{cls.__name__.lower()}.{attr[0].lower()}{attr[1:]}"


class Counting:
    """Counts every method sent on py-amqp channels while active."""

    def __init__(self) -> None:
        self.methods: Counter[str] = collections.Counter()
        self.round_trips = 0
        self._original = amqp.Channel.send_method
        counter = self

        def send_method(channel: Any, sig: Any, *args: Any, **kwargs: Any) -> Any:
            counter.methods[NAMES.get(sig, str(sig))] += 1
            if sig in SYNCHRONOUS and not kwargs.get("nowait"):
                counter.round_trips += 1
            return counter._original(channel, sig, *args, **kwargs)

        self._patched = send_method

    def __enter__(self) -> Counting:
        amqp.Channel.send_method = self._patched  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        amqp.Channel.send_method = self._original  # type: ignore[method-assign]


class Part:
    def __init__(self, group_id: str, index: int, body: Any) -> None:
        self.id, self.group, self.group_index, self.chord = \
            f"{group_id}-{index}", group_id, index, body


def one_chord(app: Celery, size: int, body_queue: str) -> Dict[str, Any]:
    group_id = str(uuid.uuid4())
    body = signature("bench.never_run", app=app, queue=body_queue)
    results = [AsyncResult(f"{group_id}-{i}", app=app) for i in range(size)]
    backend = app.backend
    with Counting() as setup:
        backend.apply_chord((group_id, results), body)
        backend.set_chord_size(group_id, size)
    parts = [Part(group_id, i, body) for i in range(size)]
    with Counting() as before_last:
        started = time.perf_counter()
        for part in parts[:-1]:
            backend.on_chord_part_return(part, "SUCCESS", part.group_index)
        per_part_s = (time.perf_counter() - started) / max(1, size - 1)
    with Counting() as last:
        started = time.perf_counter()
        backend.on_chord_part_return(parts[-1], "SUCCESS", parts[-1].group_index)
        last_s = time.perf_counter() - started
    return {
        "size": size,
        "setup_methods": sum(setup.methods.values()),
        "per_part_methods": sum(before_last.methods.values()) / max(1, size - 1),
        "per_part_round_trips": before_last.round_trips / max(1, size - 1),
        "per_part_by_method": {k: v / max(1, size - 1) for k, v in before_last.methods.items()},
        "last_part_methods": sum(last.methods.values()),
        "last_part_round_trips": last.round_trips,
        "per_part_ms": per_part_s * 1000,
        "last_part_ms": last_s * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    vhost = broker.new_vhost()
    url = broker.url_for(vhost)
    app = Celery("chord-ops", broker=url, backend=url, set_as_current=False)
    body_queue = "chord-ops-bodies"
    runs: List[Dict[str, Any]] = []
    try:
        for size in sizes:
            for _ in range(args.reps):
                runs.append(one_chord(app, size, body_queue))
        app.backend.close()
        time.sleep(0.5)
        sent = broker.queue(vhost, body_queue)["messages"]
        expected = len(sizes) * args.reps
        left = [q["name"] for q in broker.queues(vhost) if ".chord" in q["name"]]
    finally:
        broker.delete_vhost(vhost)
    print(f"{'N':>6} {'ops/part':>9} {'RTs/part':>9} {'ms/part':>8} "
          f"{'last ops':>9} {'last RTs':>9} {'last ms':>8}  methods per part")
    summary = []
    for size in sizes:
        mine = [r for r in runs if r["size"] == size]
        row = {key: statistics.median(r[key] for r in mine) for key in (
            "per_part_methods", "per_part_round_trips", "per_part_ms",
            "last_part_methods", "last_part_round_trips", "last_part_ms")}
        methods = mine[0]["per_part_by_method"]
        print(f"{size:>6} {row['per_part_methods']:>9.2f} {row['per_part_round_trips']:>9.2f} "
              f"{row['per_part_ms']:>8.2f} {row['last_part_methods']:>9.0f} "
              f"{row['last_part_round_trips']:>9.0f} {row['last_part_ms']:>8.1f}  "
              + ", ".join(f"{k} {v:.2f}" for k, v in sorted(methods.items())))
        summary.append({"size": size, **row, "per_part_by_method": methods})
    print(f"bodies sent: {sent} for {expected} chords; chord queues left: {len(left)}")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "chord_ops.json").write_text(json.dumps(
        {"summary": summary, "bodies_sent": sent, "chords": expected, "runs": runs}, indent=1))
    if sent != expected or left:
        raise SystemExit("FAILED: a body was not sent exactly once, or chord queues were left")


if __name__ == "__main__":
    main()
