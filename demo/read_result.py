"""Read one task's stored result in a process of its own and print one line.

    python read_result.py TASK_ID [--reader N] [--expect STATE]

The call (``add(2, 3)``) is rebuilt from the stored result itself
(``result_extended``), so this process knows nothing but the id.  A failure is
printed as ``ExceptionType: message``, never raised.  Exits 1 if the state is not
the expected one.
"""
from __future__ import annotations

import argparse
import sys

from demo_tasks import app


def describe_call(result) -> str:
    name = (result.name or "?").rsplit(".", 1)[-1]
    args = [repr(a) for a in (result.args or ())]
    args += [f"{k}={v!r}" for k, v in (result.kwargs or {}).items()]
    return f"{name}({', '.join(args)})"


def describe_value(state: str, value) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return repr(value) if isinstance(value, str) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("task_id")
    parser.add_argument("--reader", default="?")
    parser.add_argument("--expect", default=None)
    opts = parser.parse_args()

    result = app.AsyncResult(opts.task_id)
    try:
        state = result.state
        value = result.result
        call = describe_call(result)
    finally:
        app.backend.close()
    print(f"{call} -> {state} {describe_value(state, value)} (reader {opts.reader})",
          flush=True)
    if opts.expect and state != opts.expect:
        print(f"  expected {opts.expect}, read {state}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
