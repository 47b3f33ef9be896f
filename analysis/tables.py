"""Table writers every family shares: Markdown and LaTeX (cells come from stats.fmt / stats.cell).

The writers are our own so the package needs neither tabulate nor jinja2.
"""

from __future__ import annotations

import pandas as pd


def to_markdown(table: pd.DataFrame) -> str:
    """Pipe table with the index as first column."""
    head = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def _tex(s) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s.replace("±", r"$\pm$")


def to_latex(table: pd.DataFrame) -> str:
    """booktabs tabular with the index as first column."""
    cols = "l" + "r" * len(table.columns)
    lines = [rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join([_tex(table.index.name or "")] + [_tex(c) for c in table.columns]) + r" \\",
             r"\midrule"]
    for idx, row in table.iterrows():
        lines.append(" & ".join([_tex(idx)] + [_tex(v) for v in row]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
