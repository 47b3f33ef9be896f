"""Sweep metrics for Ray's metrics agent (dashboard Metrics page, Prometheus, Grafana).

Recorded by each trial through `ray.util.metrics`, exported by every node's metrics agent beside
Ray's own (Prometheus names get Ray's `ray_` prefix, counters a `_total` suffix), tagged by
experiment and run (and trial where it is per trial). For watching only: the Parquet parts are
the record, and nothing in `analysis` reads these.
"""

from __future__ import annotations

import functools

RUN_TAGS = ("experiment", "run")
TRIAL_TAGS = ("experiment", "run", "trial")


@functools.lru_cache(maxsize=1)
def _metrics() -> dict:
    from ray.util import metrics as m
    return {
        "trials": m.Counter("noisetune_trials_finished", "trial attempts ended, by status (ok, diverged, error; an error may be retried)",
                            tag_keys=(*RUN_TAGS, "status")),
        "epochs": m.Counter("noisetune_epochs", "training epochs completed", tag_keys=TRIAL_TAGS),
        "rows": m.Counter("noisetune_rows_written", "result rows written to Parquet parts", tag_keys=RUN_TAGS),
        "metric": m.Gauge("noisetune_metric", "latest headline value of the experiment's metric per trial",
                          tag_keys=(*TRIAL_TAGS, "metric")),
        "epoch_seconds": m.Gauge("noisetune_seconds_per_epoch", "seconds of the latest training epoch",
                                 tag_keys=TRIAL_TAGS),
    }


class TrialMetrics:
    """One trial's recorder; every call is a no-op outside a Ray worker (tests, plain scripts)."""

    def __init__(self, experiment: str, run: str, trial: str):
        self.run_tags = {"experiment": experiment, "run": run}
        self.trial_tags = self.run_tags | {"trial": trial}
        self.last_epoch_at = None

    def _get(self):
        import ray
        return _metrics() if ray.is_initialized() else None

    def epoch(self, now: float) -> None:
        m = self._get()
        if m is None:
            return
        m["epochs"].inc(1, tags=self.trial_tags)
        if self.last_epoch_at is not None:
            m["epoch_seconds"].set(now - self.last_epoch_at, tags=self.trial_tags)
        self.last_epoch_at = now

    def finished(self, status: str, rows: int, metric: str, value: float) -> None:
        m = self._get()
        if m is None:
            return
        m["trials"].inc(1, tags=self.run_tags | {"status": status})
        m["rows"].inc(rows, tags=self.run_tags)
        if value == value:  # not NaN
            m["metric"].set(value, tags=self.trial_tags | {"metric": metric})
