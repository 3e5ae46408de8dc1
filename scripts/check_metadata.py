"""Check a built wheel's metadata against the package and what CI runs.

    python scripts/check_metadata.py dist/celery_amqp_results-0.1.0-py3-none-any.whl

The version is the package's (``_version.py``, its one place); Requires-Python, the
Celery requirement and the Python classifiers are the range scripts/test.sh runs; the
``otel`` extra asks for the OpenTelemetry API only; ``py.typed`` is in the wheel.
"""
from __future__ import annotations

import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(wheel: str) -> int:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    problems = []
    version = re.search(r'__version__ = "([^"]+)"',
                        ROOT.joinpath("src/celery_amqp_results/_version.py").read_text())
    if version is None or metadata["Version"] != version.group(1):
        problems.append(f"Version {metadata['Version']} is not _version.py's")
    runs = re.findall(r'run_suite rabbitmq-[\d.]+ ([\d.]+) "celery==([\d.]+)\.\*"',
                      ROOT.joinpath("scripts/test.sh").read_text())
    pythons = sorted({python for python, _ in runs}, key=lambda v: tuple(map(int, v.split("."))))
    celeries = sorted({celery for _, celery in runs},
                      key=lambda v: tuple(map(int, v.split("."))))
    if metadata["Requires-Python"] != f">={pythons[0]}":
        problems.append(f"Requires-Python {metadata['Requires-Python']} is not >={pythons[0]}")
    classifiers = set(metadata.get_all("Classifier") or [])
    for python in pythons:
        if f"Programming Language :: Python :: {python}" not in classifiers:
            problems.append(f"no classifier for Python {python}, which CI runs")
    requires = metadata.get_all("Requires-Dist") or []
    celery = next((line for line in requires if re.match(r"celery\b", line)), "")
    if f">={celeries[0]}" not in celery:
        problems.append(f"celery requirement {celery!r} does not start at {celeries[0]}")
    otel = [line for line in requires if 'extra == "otel"' in line]
    if not otel or any(not line.startswith("opentelemetry-api") for line in otel):
        problems.append(f"the otel extra should be opentelemetry-api alone: {otel}")
    if not any(name.endswith("celery_amqp_results/py.typed") for name in names):
        problems.append("py.typed is not in the wheel")
    if not any(name.endswith("celery_amqp_results/telemetry.py") for name in names):
        problems.append("telemetry.py is not in the wheel")
    for problem in problems:
        print(f"release: metadata: {problem}", file=sys.stderr)
    if not problems:
        print(f"release: metadata: version {metadata['Version']}, Python "
              f"{metadata['Requires-Python']} ({', '.join(pythons)} run), {celery}, "
              f"{len(classifiers)} classifiers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
