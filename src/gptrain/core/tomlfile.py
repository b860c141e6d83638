"""TOML for a flat table of settings (strings, numbers, booleans and lists of them), which tomllib reads back
as it was written: Python reads TOML but has no writer, and a run's settings need no more than this."""

from __future__ import annotations

import json
import math
from typing import Any

from gptrain.core.errors import GptrainError


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        # A JSON string is a TOML basic string, once DEL (which TOML wants escaped and JSON not) is escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise GptrainError(f"a {type(value).__name__} cannot be written as a TOML setting")


def toml_table(values: dict[str, Any]) -> str:
    """``key = value`` lines for a flat table; keys are bare (letters, digits, _ and -)."""
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())
