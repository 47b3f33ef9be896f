"""Table 1 of the EBM paper: (alpha_train, alpha_test) cells x data sets, "mean ± SEM" in %.

Markdown and LaTeX writers are our own so the package needs neither tabulate nor jinja2.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.stats import ok_rows, summarize

PAPER_CELLS = [(0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5), (0.5, 0.9), (0.5, 1.5),
               (0.9, 0.5), (0.9, 0.9), (0.9, 1.5), (1.5, 1.5)]


def cell_label(alpha_train, alpha_test) -> str:
    return f"({alpha_train:g}, {alpha_test:g})"


def fmt(mean, sem) -> str:
    """'mean ± SEM' in percent; a single seed has no SEM."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if sem is None or (isinstance(sem, float) and math.isnan(sem)):
        return f"{mean * 100:.2f} ± n/a"
    return f"{mean * 100:.2f} ± {sem * 100:.2f}"


def table1(df: pd.DataFrame, n=None, cells=None) -> pd.DataFrame:
    """Table 1 layout at n (default: the largest n present); cells default to the paper's
    cells that are present, else every (alpha_train, alpha_test) pair present.

    Returns strings; `.attrs["summary"]` keeps the numbers (mean, sem, count per cell)."""
    d = ok_rows(df)
    if "distribution_train" in d.columns and "distribution_test" in d.columns:
        d = d[d["distribution_train"] == d["distribution_test"]]
    if "placement_train" in d.columns and "placement_test" in d.columns:
        d = d[d["placement_train"] == d["placement_test"]]
    if d.empty:
        return pd.DataFrame()
    n = int(d["n"].max()) if n is None else int(n)
    d = d[d["n"] == n]
    s = summarize(d, ["alpha_train", "alpha_test", "dataset"])
    present = sorted({(float(a), float(b)) for a, b in zip(s["alpha_train"], s["alpha_test"])})
    if cells is None:
        cells = [c for c in PAPER_CELLS if c in present] or present
    table = pd.DataFrame(index=[cell_label(*c) for c in cells],
                         columns=sorted(s["dataset"].astype(str).unique()), dtype=object)
    table.index.name = "(alpha_train, alpha_test)"
    for _, r in s.iterrows():
        label = cell_label(r["alpha_train"], r["alpha_test"])
        if label in table.index:
            table.loc[label, str(r["dataset"])] = fmt(r["mean"], r["sem"])
    table = table.fillna("")
    table.attrs["summary"] = s
    table.attrs["n"] = n
    return table


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
