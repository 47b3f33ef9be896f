"""The report section for a family that has no analysis module: what every result row allows.

Rows say what to summarise: `tune_metric` (the experiment's metric), `headline` (the rows each
trial's headline comes from) and `summary_by` (the method's summary columns, as JSON). So a new
family's results are readable before anyone writes its figures.
"""

from __future__ import annotations

import json

import pandas as pd

from analysis.stats import ok_rows, plural, spread


def _summary_columns(df: pd.DataFrame) -> list[str]:
    """The union of the rows' summary_by lists, in first-seen order, that exist and vary."""
    names: list[str] = []
    for text in df["summary_by"].dropna().unique() if "summary_by" in df.columns else []:
        try:
            names += [n for n in json.loads(text) if n not in names]
        except (ValueError, TypeError):
            continue
    return [n for n in names if n in df.columns and df[n].nunique(dropna=False) > 1]


def counts(df: pd.DataFrame) -> pd.DataFrame:
    """Rows and trials per (method, status)."""
    keys = [c for c in ("method", "status") if c in df.columns]
    if not keys:
        return pd.DataFrame({"rows": [len(df)]})
    trials = df["trial_key"] if "trial_key" in df.columns else pd.Series(range(len(df)), index=df.index)
    g = df.assign(_trial=trials).groupby(keys, dropna=False)
    return pd.DataFrame({"rows": g.size(), "trials": g["_trial"].nunique()})


def metric_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per metric named in the rows: mean, SEM and the per-seed spread by configuration."""
    d = ok_rows(df)
    if "headline" in d.columns:
        d = d[d["headline"].fillna(False).astype(bool)]
    out = []
    metrics = sorted(d["tune_metric"].dropna().astype(str).unique()) if "tune_metric" in d.columns else []
    for metric in metrics:
        rows = d[d["tune_metric"] == metric]
        if metric not in rows.columns or rows[metric].notna().sum() == 0:
            out.append((f"{metric}: no values in the ok rows", pd.DataFrame()))
            continue
        rows = rows.assign(**{metric: pd.to_numeric(rows[metric], errors="coerce")})
        by = _summary_columns(rows)
        table = spread(rows, by, metric) if by else spread(rows.assign(all="all"), ["all"], metric)
        mode = rows["tune_mode"].dropna().astype(str).unique() if "tune_mode" in rows.columns else []
        goal = f", {mode[0]}imised" if len(mode) == 1 else ""
        seeds = rows["seed"].nunique() if "seed" in rows.columns else "?"
        out.append((f"{metric}{goal} on each trial's headline rows, by {', '.join(by) or 'all rows'} "
                    f"(mean, SEM and spread over {plural(seeds, 'seed')})", table.round(6)))
    return out


def section(df: pd.DataFrame, out) -> dict:
    """Row counts, the metric by configuration, and the per-seed spread."""
    tables = [("rows and trials by method and status", counts(df))] + metric_tables(df)
    return {"title": "", "tables": tables, "figures": [], "skipped": [], "findings": []}
