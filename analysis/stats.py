"""Mean, SEM and count over seeds per setting: the statistic every figure and table uses."""

from __future__ import annotations

import numpy as np
import pandas as pd


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


def protocol_matches(dataset, presets, paper_dataset: str) -> bool:
    """The comparability rule: a published number sits beside ours only for a run of the paper's
    data set (spelling aside) on the paper preset alone; anything else is "not comparable"."""
    return _norm(dataset) == _norm(paper_dataset) and list(presets) == ["paper"]
