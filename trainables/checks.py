"""Refusals of bad config values: one line that names the field and the allowed values.

Every layer raises the same ConfigError (the CLI prints it as one line and exits 2), so it lives
apart from any method or noise law.
"""

from __future__ import annotations

import difflib
import math


class ConfigError(ValueError):
    """A config value outside its allowed set; the message names the field and the choices."""


def check_choice(field: str, value, allowed) -> None:
    """Refuse `value` unless it is in `allowed`, suggesting the nearest allowed name."""
    try:
        if value in allowed:
            return
    except TypeError:  # an unhashable value (a list) against a set or dict of names
        pass
    hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    near = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ConfigError(f"{field}={value!r} is not allowed{near}; allowed: {', '.join(map(str, allowed))}")


def check_range(field: str, value, low: float, high: float = math.inf, *, low_open=False) -> None:
    """Refuse a number outside [low, high] (or (low, high] with low_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        what = "is out of range" if _is_number(value) else "is not a number"
        raise ConfigError(f"{field}={value!r} {what}; allowed: {bracket}{low}, {high}]")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(field: str, value, low: int) -> None:
    """Refuse anything but an integer >= low (bools included: True is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "is out of range" if isinstance(value, int) and not isinstance(value, bool) else "is not an integer"
        raise ConfigError(f"{field}={value!r} {what}; allowed: integers >= {low}")


def check_optional_int(field: str, value, low: int) -> None:
    """check_int, with None allowed (a field whose None means "the trial's value")."""
    if value is not None:
        check_int(field, value, low)


def check_keys(field: str, mapping, allowed) -> None:
    """Refuse a dict (a test setting) with keys outside `allowed`, or anything but a dict."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{field}={mapping!r} is not allowed; allowed: a dict with keys from {', '.join(allowed)}")
    extra = sorted(str(k) for k in mapping if k not in allowed)
    if extra:
        raise ConfigError(f"{field} key {extra[0]!r} is not allowed; allowed: {', '.join(allowed)}")
