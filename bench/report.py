"""The log every benchmark keeps: printed as it goes, written to `--out` at the end."""

from __future__ import annotations

import platform
import time
from pathlib import Path


class Report:
    """`log = Report(title, machine)`; `log(line)` prints and keeps it; `log.save(path)` writes all."""

    def __init__(self, title: str, machine: str):
        self.lines: list[str] = []
        self(f"# {title}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        self(f"machine: {platform.node()} {platform.machine()}, {machine}")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: str | None) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text("\n".join(self.lines) + "\n")
