"""The campaign's table, as printed by `python -m tests.chaos` and shown in docs/chaos.md."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]

_ROWS = [
    ("restarts", "restarts after a fault or stop"),
    ("records_lost", "records lost"),
    ("records_duplicated", "records duplicated"),
    ("corrupt_checkpoints_seen", "corrupt checkpoints seen"),
    ("wrong_answers", "wrong answers"),
    ("contract_violations", "contract violations"),
]


def render(report: dict[str, Any]) -> str:
    """The campaign's table, as printed and as shown in docs/chaos.md."""
    labels = [*report["faults"], *report["observed"], *report["peaks"]]
    width = max(60, *(len(label) + 4 for label in labels))
    lines = [
        f"checkpoint-worker chaos campaign: {report['mode']} mode, seed {report['seed']}, "
        f"{report['seconds']:.0f} s",
        "",
        f"{'faults injected, by kind':<{width}}{'count':>8}",
    ]
    lines += [f"  {kind:<{width - 2}}{count:>8}" for kind, count in report["faults"].items()]
    lines.append(f"  {'total':<{width - 2}}{report['faults_total']:>8}")
    lines.append("")
    for key, title in _ROWS:
        lines.append(f"{title:<{width}}{report[key]:>8}")
    lines.append(f"{'final answers compared with the oracle':<{width}}{report['final_checks']:>8}")
    lines.append("")
    lines.append("observed")
    lines += [f"  {what:<{width - 2}}{count:>8}" for what, count in report["observed"].items()]
    lines += [f"  {what:<{width - 2}}{value:>8.2f}" for what, value in report["peaks"].items()]
    if report["skipped"]:
        lines.append("")
        lines += [f"skipped: {why}" for why in report["skipped"]]
    verdict = "PASS" if report["clean"] else "FAIL"
    lines += ["", f"{verdict}: lost, duplicated, corrupt, wrong and violations must all be 0"]
    if report["problems"]:
        lines += ["", "problems:", *(f"  {p}" for p in report["problems"])]
    return "\n".join(lines)
