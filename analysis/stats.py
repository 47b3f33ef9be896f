"""Mean, SEM and count over seeds per setting: the statistic every figure and table uses."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

# Seeds, and fields that do not change results: never a reason to keep rows apart (a family
# passes its own as `ignore`).
NOT_SETTINGS = {"seed", "eval_seed", "data_root", "download", "device"}


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Only finished trials: diverged/error rows carry no meaningful accuracy."""
    if "status" not in df.columns:
        return df
    return df[df["status"] == "ok"]


def summarize(df: pd.DataFrame, by: list[str], metric: str = "accuracy") -> pd.DataFrame:
    """One row per setting in `by`: mean, sem (std ddof=1 / sqrt(count); NaN for one seed), count."""
    by = list(by)
    rows = ok_rows(df)
    rows = rows[rows[metric].notna()]
    if rows.empty:
        return pd.DataFrame(columns=[*by, "mean", "sem", "count"])
    values = rows[metric].astype(float)
    g = values.groupby([rows[c] for c in by], dropna=False)
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "count": g.count()})
    out["sem"] = np.where(out["count"] > 1, out["std"] / np.sqrt(out["count"]), np.nan)
    return out.drop(columns="std").reset_index()[[*by, "mean", "sem", "count"]]


def spread(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """summarize() plus the per-seed spread (std, min, max) of `metric` per setting in `by`."""
    rows = ok_rows(df)
    rows = rows[rows[metric].notna()]
    s = summarize(rows, by, metric)
    if rows.empty or not by:
        return s
    g = rows[metric].astype(float).groupby([rows[c] for c in by], dropna=False)
    extra = pd.DataFrame({"std": g.std(ddof=1), "min": g.min(), "max": g.max()}).reset_index()
    return s.merge(extra, on=by, how="left")


def _norm(s) -> str:
    return str(s).lower().replace("-", "").replace("_", "")


def protocol_differences(df: pd.DataFrame, protocol: dict) -> list[str]:
    """The comparability rule: a published number sits beside ours only when every field that
    matters has the paper's value in every row (data-set names compared without case, '-', '_').
    Returns what differs or is not recorded ("image_size=8 (paper 32)"); empty means comparable."""
    out = []
    for field, want in protocol.items():
        if field not in df.columns or df[field].isna().all():
            out.append(f"{field} not recorded (paper {want})")
            continue
        have = sorted({str(v) for v in df[field].dropna().unique()})
        ok = all(_norm(v) == _norm(want) if isinstance(want, str) else _close(v, want) for v in df[field].dropna())
        if not ok or df[field].isna().any():
            out.append(f"{field}={'/'.join(have)} (paper {want})")
    return out


def _close(value, want) -> bool:
    try:
        return abs(float(value) - float(want)) < 1e-9
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Never pool: a table, figure or finding keeps apart each configuration that varies.


def config_columns(d: pd.DataFrame, known=(), ignore=()) -> list[str]:
    """The configuration columns of the rows: named by the rows themselves (`config_columns`),
    plus `known` ones for hand-made or older frames; seeds and NOT_SETTINGS excluded."""
    names = list(known)
    if "config_columns" in d.columns:
        for text in d["config_columns"].dropna().unique():
            names += [n for n in json.loads(text) if n not in names]
    return [n for n in names if n in d.columns and n not in NOT_SETTINGS and n not in ignore]


def one_setting(d: pd.DataFrame, keep, preferred: dict | None = None, known=(), ignore=()) -> tuple[pd.DataFrame, dict]:
    """Rows of one configuration apart from the columns in `keep`: each other configuration
    column that varies is fixed to its preferred (or first) value. Returns (rows, what was fixed)
    so that the figure or table can say so; the seeds are what remains to average over."""
    preferred = preferred or {}
    fixed = {}
    for col in sorted(config_columns(d, known, ignore), key=lambda c: (c not in preferred, c)):
        if col in keep or col not in d.columns or d[col].nunique(dropna=False) < 2:
            continue
        values = list(d[col].dropna().unique())
        pick = preferred[col] if preferred.get(col) in values else sorted(values, key=str)[0]
        d = d[d[col] == pick]
        fixed[col] = pick
    return d, fixed


def fixed_text(fixed: dict) -> str:
    return ("fixed: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in fixed.items())
            if fixed else "")
