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
        self(f"machine: {platform.node()} {platform.machine()}, {cpu()}, {machine}")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: str | None) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text("\n".join(self.lines) + "\n")


def cpu() -> str:
    """The CPU model and the vector extensions that decide fast paths (AVX-512, bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(have) or 'no AVX2'})"
