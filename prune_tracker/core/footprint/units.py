"""Byte units: `human_bytes` for tables and figures, `parse_bytes` for budgets given on the command line.

Decimal units are powers of 1000 (KB, MB, GB), binary units powers of 1024 (KiB, MiB, GiB); unit names are
case-insensitive. `human_bytes` always writes decimal units with 3 significant digits, so that
`parse_bytes(human_bytes(n))` is within 0.5% of n.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
ALLOWED_UNITS = "B, KB, MB, GB, KiB, MiB, GiB"
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_DECIMAL_STEPS = (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))


def human_bytes(n: float) -> str:
    """1536 -> '1.54 KB', 999 -> '999 B', 2_500_000 -> '2.5 MB' (decimal units, 3 significant digits)."""
    sign, value = ("-" if n < 0 else ""), abs(float(n))
    for unit, size in _DECIMAL_STEPS:
        if value >= size * 0.9995:  # 999_950 B would print as '1e+03 KB'; write '1 MB' instead
            return f"{sign}{value / size:.3g} {unit}"
    return f"{sign}{value:.0f} B"


def parse_bytes(text: str | int) -> int:
    """'200KB' -> 200000, '1.5 MiB' -> 1572864, '512' -> 512 (a bare number is bytes); rounds to a whole byte.

    Raises ValueError naming the bad value and the allowed units for anything else (negative numbers,
    unknown units, empty strings, exponents).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"byte size must not be negative, got {text}")
        return text
    match = _PATTERN.match(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in UNITS):
        raise ValueError(
            f"cannot parse byte size {text!r}: expected a non-negative number with an optional unit "
            f"({ALLOWED_UNITS}; case-insensitive), e.g. '200KB' or '1.5 MiB'"
        )
    try:
        value = Decimal(match.group(1)) * UNITS[unit or "b"]
    except InvalidOperation as exc:  # pragma: no cover - the pattern only admits valid decimals
        raise ValueError(f"cannot parse byte size {text!r}") from exc
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))
