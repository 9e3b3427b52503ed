"""What a benchmark row found, the table it prints as, and the JSON it is saved as."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Measurement", "machine", "render_table", "write_json"]


@dataclass(frozen=True)
class Measurement:
    """One line of the table: the worker's figure against a baseline's, and the goal.

    `passed` is None for a line that only gives context (no goal of its own).
    """

    row: int
    what: str
    worker: str
    baseline: str
    ratio: str
    goal: str
    passed: bool | None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: ""}[self.passed]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import numpy

    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "executable": sys.executable,
    }


_COLUMNS = ("#", "measurement", "worker", "baseline", "ratio", "goal", "")


def render_table(measurements: list[Measurement]) -> str:
    rows = [_COLUMNS] + [
        (str(m.row), m.what, m.worker, m.baseline, m.ratio, m.goal, m.verdict) for m in measurements
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths).rstrip())
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any], measurements: list[Measurement]) -> None:
    document = {
        **document,
        "measurements": [asdict(m) | {"verdict": m.verdict} for m in measurements],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)
