"""Human durations (``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``) for command options."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Optional

import click

#: Seconds in each unit a duration may use.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` -> 90 minutes; a ValueError naming the text and the accepted forms."""
    cleaned = text.strip().lower().replace(" ", "")
    if not _WHOLE.fullmatch(cleaned):
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit, s (seconds), "
            f"m (minutes), h (hours), d (days) or w (weeks), e.g. 90s, 30m, 2h, 7d, or "
            f"combined, 1h30m")
    seconds = sum(float(number) * UNITS[unit] for number, unit in _PART.findall(cleaned))
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """A duration the way ``parse_duration`` reads it, days down to seconds (``1h30m``).

    Weeks are written as days: ``7d`` reads back as ``7d``, not ``1w``.
    """
    left = round(delta.total_seconds())
    if left <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = UNITS[unit]
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


class Duration(click.ParamType):
    """A click option type for ``parse_duration``."""

    name = "duration"

    def convert(self, value: Any, param: Optional[click.Parameter],
                ctx: Optional[click.Context]) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
