"""`python -m analysis.report RESULTS [--out DIR]`: report.md plus a self-contained report.html.

Works on partial results: figures whose data is absent are left out and listed as such.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

from analysis import figures, tables
from analysis.findings import findings
from analysis.load import load

META = ["experiment", "preset", "git_commit", "noisetune_version", "torch_version",
        "ray_version", "device_name", "host"]


def metadata(df) -> dict[str, str]:
    """Run provenance: distinct values of each provenance column, and row counts by status."""
    meta = {}
    for col in META:
        if col in df.columns:
            vals = sorted(df[col].dropna().astype(str).unique())
            meta[col] = ", ".join(vals) if vals else "(none)"
    meta["rows"] = str(len(df))
    if "status" in df.columns:
        counts = df["status"].astype(str).value_counts().sort_index()
        meta["rows by status"] = ", ".join(f"{k}: {v}" for k, v in counts.items())
    if "trial_key" in df.columns:
        meta["trials"] = str(df["trial_key"].nunique())
    meta["part files read"] = f"{df.attrs.get('parts', 0) - len(df.attrs.get('unreadable', []))} of {df.attrs.get('parts', 0)}"
    if df.attrs.get("unreadable"):
        meta["unreadable part files"] = ", ".join(df.attrs["unreadable"])
    return meta


def build(results, out, title: str | None = None) -> dict:
    """Write report.md, report.html and figure PNG/SVGs into `out`; return what was written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load(results)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    title = title or f"NoiseTune report: {Path(str(results).rstrip('/')).name}"
    meta = metadata(df)
    table = tables.table1(df)
    made, skipped = [], []
    for name, fn in figures.ALL.items():
        try:
            fig = fn(df, out=out / name)
        except (ValueError, KeyError) as exc:
            skipped.append(f"{name} ({exc})")
            continue
        plt.close(fig)
        made.append(name)
    found = findings(df)

    md = [f"# {title}", "", f"Source: `{results}`", "", "## Run metadata", ""]
    md += [f"- **{k}**: {v}" for k, v in meta.items()]
    md += ["", f"## Summary table (Table 1 layout, accuracy % mean ± SEM over seeds, n={table.attrs.get('n', '?')})", ""]
    md += [tables.to_markdown(table) if not table.empty else "_no ok rows_", "", "## Figures", ""]
    md += [f"![{n}]({n}.png)\n" for n in made]
    if skipped:
        md += ["Not drawn (no data in these results): " + "; ".join(skipped), ""]
    md += ["## Findings", ""] + [f"- {f}" for f in found] + ([] if found else ["_none computable_"])
    (out / "report.md").write_text("\n".join(md) + "\n")

    esc = html.escape
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 8px;text-align:right}"
         "img{max-width:100%}</style></head><body>",
         f"<h1>{esc(title)}</h1><p>Source: <code>{esc(str(results))}</code></p><h2>Run metadata</h2><ul>"]
    h += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in meta.items()]
    h += [f"</ul><h2>Summary table (accuracy % mean ± SEM, n={table.attrs.get('n', '?')})</h2>"]
    if table.empty:
        h.append("<p>no ok rows</p>")
    else:
        h.append("<table><tr><th>" + esc(table.index.name or "") + "</th>"
                 + "".join(f"<th>{esc(str(c))}</th>" for c in table.columns) + "</tr>")
        for idx, row in table.iterrows():
            h.append(f"<tr><th>{esc(str(idx))}</th>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>")
        h.append("</table>")
    h.append("<h2>Figures</h2>")
    for n in made:
        data = base64.b64encode((out / f"{n}.png").read_bytes()).decode()
        h.append(f"<h3>{esc(n)}</h3><img alt='{esc(n)}' src='data:image/png;base64,{data}'>")
    if skipped:
        h.append("<p>Not drawn (no data in these results): " + esc("; ".join(skipped)) + "</p>")
    h.append("<h2>Findings</h2><ul>" + "".join(f"<li>{esc(f)}</li>" for f in found) + "</ul></body></html>")
    (out / "report.html").write_text("\n".join(h) + "\n")
    return {"figures": made, "skipped": skipped, "findings": found, "rows": len(df)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__)
    p.add_argument("results", help="experiment folder, its results/ folder, a folder of part files, or a URI")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    info = build(a.results, a.out, a.title)
    print(f"wrote {a.out}/report.md and report.html: {info['rows']} rows, figures: {', '.join(info['figures']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
