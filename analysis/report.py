"""`python -m analysis.report RESULTS [--out DIR]`: report.md plus a self-contained report.html.

One section per method family present in the rows (their `family` column): a family with a
registered analysis module (FAMILY and section()) gets its figures, tables and findings; any other
gets the generic section (row counts, metric by configuration, per-seed spread). A section that
fails says why in the report and the others still render. Works on partial results: figures whose
data is absent are left out and listed as such.

Analysis modules are registered, never guessed from a family's name: the `noisetune.analysis`
entry points of every installed distribution (family name -> module; this project's in its
pyproject.toml), then the NOISETUNE_PLUGINS modules (not installed) whose source assigns
`FAMILY = "<family>"` at top level. That source is read, not imported (the other plugin modules
import the tuner side), and a module is imported only when its family has rows.
"""

from __future__ import annotations

import argparse
import ast
import base64
import html
import importlib
import importlib.machinery
import importlib.metadata
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

import pandas as pd

from analysis import generic, stats
from analysis.load import load, part_files
from analysis.tables import to_markdown

META = ["family", "method", "experiment", "preset", "git_commit", "git_dirty", "noisetune_version", "torch_version",
        "ray_version", "device_name", "host"]
UNLABELLED = "(no family column)"


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


GROUP = "noisetune.analysis"  # entry-point group: family name -> module with FAMILY and section()
DISTRIBUTION = "noisetune"
PLUGINS_ENV = "NOISETUNE_PLUGINS"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


def _entries() -> list:
    """GROUP's entry points, each distribution's from the first copy of its metadata on sys.path
    that declares any (a stale `noisetune.egg-info` in the source tree may declare none)."""
    entries, seen = [], set()
    for dist in importlib.metadata.distributions():
        found = [] if _normal(dist.name) in seen else list(dist.entry_points.select(group=GROUP))
        if found:
            seen.add(_normal(dist.name))
            entries += found
    return sorted(entries, key=lambda e: _normal(e.dist.name) != DISTRIBUTION)


def _source(module: str) -> Path | None:
    """The .py file of a module, found on sys.path without importing it or its packages."""
    parts, path, spec = module.split("."), None, None
    for i in range(len(parts)):
        try:  # path: the parent package's folders (sys.path for the first part)
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]), path)
        except (ImportError, ValueError):
            return None
        path = spec and spec.submodule_search_locations
        if spec is None or (path is None and i < len(parts) - 1):
            return None
    return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None


def declared_family(module: str) -> str | None:
    """The string a module's source assigns to FAMILY at top level, read without importing it."""
    source = _source(module)
    try:
        tree = ast.parse(source.read_text()) if source else None
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body if tree else []:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FAMILY" for t in node.targets) \
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node.value.value
    return None


def analysis_modules() -> dict[str, list[str]]:
    """family -> the modules registered for its section (more than one is refused when it renders)."""
    found: dict[str, list[str]] = {}
    entries = _entries()
    for entry in entries:
        found.setdefault(entry.name, []).append(entry.module)
    if not any(_normal(e.dist.name) == DISTRIBUTION for e in entries):
        print(f"warning: no {GROUP!r} entry points of {DISTRIBUTION!r}: every family gets the generic "
              f"section; run `pip install -e .` in the repository", file=sys.stderr)
    for name in (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",")):
        family = declared_family(name) if name else None
        if family is not None and name not in found.get(family, []):
            found.setdefault(family, []).append(name)
    return found


def family_module(family: str, registered: list[str]):
    """The analysis module registered for `family` (imported now), checked: FAMILY == family and a
    section(); None if none is registered; an error (the section then says why) otherwise."""
    if not registered:
        return None
    if len(registered) > 1:
        raise ValueError(f"family {family!r} has {len(registered)} analysis modules registered "
                         f"({', '.join(registered)}); allowed: one")
    module = importlib.import_module(registered[0])
    if getattr(module, "FAMILY", None) != family or not callable(getattr(module, "section", None)):
        raise ValueError(f"{registered[0]} is registered for family {family!r} but has "
                         f"FAMILY={getattr(module, 'FAMILY', None)!r}; allowed: FAMILY = {family!r} and a section()")
    return module


def sections(df: pd.DataFrame, out: Path) -> list[dict]:
    """One rendered section per family in the rows; a failing one carries its error instead."""
    labels = df["family"].astype("string").fillna(UNLABELLED) if "family" in df.columns else \
        pd.Series(UNLABELLED, index=df.index)
    result, registered = [], analysis_modules()
    for family in sorted(labels.unique()) or [UNLABELLED]:
        rows = df[labels == family].reset_index(drop=True)
        rows.attrs = dict(df.attrs)
        names = registered.get(family, [])
        try:
            module = family_module(family, names)
            section = (module or generic).section(rows, out)
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            section = {"tables": [], "figures": [], "skipped": [], "findings": [],
                       "error": f"{type(exc).__name__}: {exc}",
                       "trace": traceback.format_exc(limit=3)}
        section["title"] = f"Family {family}" + (f": {section['title']}" if section.get("title") else "")
        section["source"] = ", ".join(names) or f"analysis.generic (no analysis module registered for {family})"
        section["rows"] = len(rows)
        result.append(section)
    return result


def _markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no rows_\n"
    if isinstance(table.index, pd.RangeIndex):
        table = table.set_index(table.columns[0])
    return to_markdown(table)


def _align(value) -> str:
    """Numbers (and cells that start with one: '98.30 ± 0.20') align right; words align left."""
    return "" if re.match(r"^\s*[-+−]?(\d|\.\d|n/a$)", str(value)) or str(value) == "" else " class='text'"


def _html_table(table: pd.DataFrame) -> str:
    esc = html.escape
    if table.empty:
        return "<p>no rows</p>"
    if isinstance(table.index, pd.RangeIndex):
        table = table.set_index(table.columns[0])
    names = [n for n in table.index.names if n is not None]
    h = ["<table><tr><th>" + esc(", ".join(map(str, names))) + "</th>"
         + "".join(f"<th>{esc(str(c))}</th>" for c in table.columns) + "</tr>"]
    for idx, row in table.iterrows():
        h.append(f"<tr><th{_align(idx)}>{esc(str(idx))}</th>"
                 + "".join(f"<td{_align(v)}>{esc(str(v))}</td>" for v in row) + "</tr>")
    return "".join(h) + "</table>"


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
    parts = sections(df, out)

    md = [f"# {title}", "", f"Source: `{results}`", "", "## Run metadata", ""]
    md += [f"- **{k}**: {v}" for k, v in meta.items()]
    decided = any(s["findings"] for s in parts)  # the rule, once, wherever a claim is judged
    if decided:
        md += ["", "## How a verdict is decided", "", stats.RULE]
    for s in parts:
        md += ["", f"## {s['title']}", "", f"{stats.plural(s['rows'], 'row')}, rendered by `{s['source']}`.", ""]
        if s.get("error"):
            md += [f"**This section failed**: {s['error']}", "", "```", s["trace"].rstrip(), "```", ""]
        for caption, table in s["tables"]:
            md += [f"### {caption}", "", _markdown(table)]
        if s["figures"]:
            md += ["### Figures", ""]
            for n in s["figures"]:
                md += [f"![{n}]({n}.png)", ""] + ([f"*{n}*: {s['captions'][n]}", ""] if n in s.get("captions", {}) else [])
        if s["skipped"]:
            md += ["Not drawn (no data in these results): " + "; ".join(s["skipped"]), ""]
        if s["findings"]:
            md += ["### Findings", ""] + [f"- {f}" for f in s["findings"]]
    (out / "report.md").write_text("\n".join(md) + "\n")

    esc = html.escape
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 8px;text-align:right}"
         "td.text,th.text{text-align:left}figure{margin:0}figcaption{font-size:90%;color:#444;max-width:800px}"
         "img{max-width:100%}.error{color:#a00}</style></head><body>",
         f"<h1>{esc(title)}</h1><p>Source: <code>{esc(str(results))}</code></p><h2>Run metadata</h2><ul>"]
    h += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in meta.items()]
    h.append("</ul>")
    if decided:
        rule = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(stats.RULE))
        h.append(f"<h2>How a verdict is decided</h2><p>{rule}</p>")
    for s in parts:
        h.append(f"<h2>{esc(s['title'])}</h2><p>{stats.plural(s['rows'], 'row')}, rendered by <code>{esc(s['source'])}</code>.</p>")
        if s.get("error"):
            h.append(f"<p class='error'><b>This section failed</b>: {esc(s['error'])}</p><pre>{esc(s['trace'])}</pre>")
        for caption, table in s["tables"]:
            h.append(f"<h3>{esc(caption)}</h3>{_html_table(table)}")
        for n in s["figures"]:
            data = base64.b64encode((out / f"{n}.png").read_bytes()).decode()
            caption = s.get("captions", {}).get(n)
            h.append(f"<figure><h3>{esc(n)}</h3><img alt='{esc(n)}' src='data:image/png;base64,{data}'>"
                     + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "") + "</figure>")
        if s["skipped"]:
            h.append("<p>Not drawn (no data in these results): " + esc("; ".join(s["skipped"])) + "</p>")
        if s["findings"]:
            h.append("<h3>Findings</h3><ul>" + "".join(f"<li>{esc(f)}</li>" for f in s["findings"]) + "</ul>")
    h.append("</body></html>")
    (out / "report.html").write_text("\n".join(h) + "\n")
    return {"figures": [n for s in parts for n in s["figures"]], "skipped": [x for s in parts for x in s["skipped"]],
            "findings": [f for s in parts for f in s["findings"]], "rows": len(df),
            "sections": {s["title"]: s.get("error", "ok") for s in parts}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    p.add_argument("results", help="experiment folder, its results/ folder, a folder of part files, or a URI")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    try:  # refused in one line, before anything is written
        _, parts = part_files(a.results)
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"analysis.report: {exc}; give an experiment folder (<storage>/<name>), its results/ folder "
              "or a folder of part-*.parquet files", file=sys.stderr)
        return 2
    if not parts:
        print(f"analysis.report: no part files (part-*.parquet) under {a.results}: nothing to report yet "
              "(a run writes one per finished trial)", file=sys.stderr)
        return 2
    info = build(a.results, a.out, a.title)
    print(f"wrote {a.out}/report.md and report.html: {info['rows']} rows, figures: {', '.join(info['figures']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
