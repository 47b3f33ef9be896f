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
