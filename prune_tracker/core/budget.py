"""One budget parser for every command that takes a footprint budget or target (compare `budget`, search `budget`,
sweep and prune `target_bytes`, main `budget`, the benchmarks): bytes with an optional unit (`120000`, `200KB`,
`1.5 MiB`; footprint.units.parse_bytes), or a fraction of a base model's dense fp32 weights (`1/8`) where there is
a base to take it of. A budget is > 0 bytes. Errors are one line naming the value and what is allowed."""

from __future__ import annotations

import re

from .footprint.units import parse_bytes

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")
FORMS = "bytes with an optional unit (120000, 200KB, 1.5MiB) or a fraction of the base's dense fp32 weights (1/8)"


def fraction(text: str | int | float | None) -> float | None:
    """The fraction `text` names (`1/8` -> 0.125), None when it is not written as one; ValueError when it is one but
    not in (0, 1]."""
    match = _FRACTION.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    numerator, denominator = float(match.group(1)), float(match.group(2))
    if denominator == 0 or not 0 < numerator / denominator <= 1:
        raise ValueError(f"budget={text!r}: a fraction of the base must be in (0, 1]")
    return numerator / denominator


def check_budget(budget: str | int | float | None, name: str = "budget") -> None:
    """Check a budget's form before its base is known (bad input fails before any run or download)."""
    if fraction(budget) is None:
        parse_budget(budget, name=name)


def parse_budget(budget: str | int | float | None, base_bytes: float | None = None, name: str = "budget"
                 ) -> int | None:
    """Bytes of a budget: None for ""/None, else > 0 bytes. A fraction needs `base_bytes` (the base model's dense fp32
    weights, `footprint_fp32_bytes`)."""
    if budget is None or (isinstance(budget, str) and not budget.strip()):
        return None
    share = fraction(budget)
    if share is not None:
        if base_bytes is None:
            raise ValueError(f"{name}={budget!r} is a fraction of a base model's dense fp32 weights, and there is no "
                             "single base here; give bytes (e.g. 200KB)")
        value = int(share * base_bytes)
    else:
        try:
            value = parse_bytes(budget if isinstance(budget, str) else int(budget))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}={budget!r} is not allowed: {err}; or a fraction of the base (1/8)") from None
    if value <= 0:
        raise ValueError(f"{name}={budget!r} must be > 0 bytes")
    return value
