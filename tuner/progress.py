"""What the driver prints while a sweep runs: a progress line a person reads, faults in one line.

Tune's own tables (a config table per trial start, a status table every 30 s) are opt-in with
--verbose; by default the job log (`ray job logs -f`, the dashboard's Jobs page) gets, every
`every` seconds and at each trial's end, one line: trials done / running / pending / failed,
trainings and test settings done, an estimate of the time left, and the best value of the
experiment's metric so far with its configuration. A failing trial is one line (error class and
message; the traceback stays in the trial's log and its `error` row). A fault that no retry or
other trial can fix (a ConfigError, e.g. a missing data set) stops the whole sweep at once.
"""

from __future__ import annotations

import math
import re
import time

from ray import tune
from ray.tune.experiment import Trial

# Errors that are the same for every trial and every retry: the sweep stops at the first one.
UNFIXABLE = ("ConfigError", "DataError")


def error_line(error) -> tuple[str, str]:
    """(error class, message) from a trial's error text: its last 'SomeError: message' line."""
    text = str(error or "").strip()
    for line in reversed(text.splitlines()):
        m = re.match(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt|Exit))(?:\((\w+)\))?:?\s*(.*)$", line)
        if m:  # "RayTaskError(RuntimeError): msg" names the trial's own error inside Ray's
            return m.group(2) or m.group(1), m.group(3).strip()
    return "Error", (text.splitlines() or ["(no message)"])[-1][:300]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress(tune.Callback, tune.Stopper):
    """Prints the sweep's progress lines; `stop_all()` (as a Tune Stopper) ends a doomed sweep."""

    def __init__(self, label: str, total: int, metric: str, mode: str, every: float = 30.0, out=print,
                 explain=None):
        """`explain(point) -> "ErrorClass: message" | None` reads a failed trial's own error row
        (Tune writes its error file only after the retry decision)."""
        self.label, self.total, self.metric, self.mode, self.every, self.out = label, total, metric, mode, every, out
        self.explain, self.printed = explain, None
        self.finished: dict[str, dict] = {}  # trial id -> its final report
        self.failed: dict[str, str] = {}  # trial id -> one-line error
        self.fatal: str | None = None
        self.seconds: list[float] = []
        self.running: dict[str, tuple[float, float, float]] = {}  # trial id -> (share done, its seconds, clock)
        self.last = None  # set at the first step: Tune's own start-up is not progress

    def __getstate__(self):
        """Tune saves its stopper in the experiment state: keep the counts, not the printer or the
        run's explain function (a restored run gets this run's Progress anyway)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("out", "explain")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out, self.explain = print, None

    # --- Tune hooks -------------------------------------------------------------------------

    def on_trial_result(self, iteration, trials, trial, result, **info):
        share = result.get("done_share")
        if isinstance(share, (int, float)) and math.isfinite(share) and not result.get("done"):
            self.running[trial.trial_id] = (float(share), float(result.get("time_total_s", 0.0)), time.monotonic())
        if result.get("done") or result.get("skipped"):
            self.running.pop(trial.trial_id, None)
            # Only what the lines need: Tune pickles this stopper into its experiment state, and a
            # whole result (with its config) per trial made the driver of a 500-trial sweep grow.
            self.finished[trial.trial_id] = {k: result.get(k) for k in (self.metric, "status", "settings")} | {
                "point": _point(trial.config)}
            if not result.get("skipped"):
                self.seconds.append(float(result.get("time_total_s", 0.0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(self.line(trials))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._fault(trial, "retrying")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._fault(trial, "giving up")
        self._print(self.line(trials))

    def on_step_end(self, iteration, trials, **info):
        if self.last is None:
            self.last = time.monotonic()
        elif time.monotonic() - self.last >= self.every:
            self._print(self.line(trials))

    def on_experiment_end(self, trials, **info):
        line = self.line(trials, final=True)
        if line != self.printed:
            self._print(line)

    def _print(self, line: str) -> None:
        self.out(line, flush=True)
        self.printed, self.last = line, time.monotonic()

    # --- as a Stopper -----------------------------------------------------------------------

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.fatal is not None

    # --- the lines --------------------------------------------------------------------------

    def _fault(self, trial, what: str) -> None:
        stored = self.explain(_point(trial.config)) if self.explain else None
        kind, message = error_line(stored or trial.get_error())
        line = f"trial {trial.trial_id} {_point(trial.config)} failed ({what}): {kind}: {message}"
        self.failed[trial.trial_id] = line
        self.out(f"[{self.label}] {line}", flush=True)
        if kind in UNFIXABLE and self.fatal is None:
            self.fatal = f"{kind}: {message}"
            self.out(f"[{self.label}] stopping the sweep: this fault is the same for every trial and every retry",
                     flush=True)

    def line(self, trials, final: bool = False) -> str:
        # A trial whose final report arrived counts as done even while Tune still lists it running.
        running = sum(1 for t in trials if t.status == Trial.RUNNING and t.trial_id not in self.finished)
        errored = sum(1 for t in trials if t.status == Trial.ERROR)
        done = len(self.finished)
        pending = max(0, self.total - done - running - errored)
        diverged = sum(1 for r in self.finished.values() if r.get("status") == "diverged")
        skipped = sum(1 for r in self.finished.values() if r.get("status") == "skipped")
        settings = sum(int(r.get("settings") or 0) for r in self.finished.values())
        parts = [f"[{self.label}] {done}/{self.total} trials done, {running} running, {pending} pending, "
                 f"{errored} failed" + (f", {diverged} diverged" if diverged else "")
                 + (f", {skipped} skipped (nothing to train)" if skipped else ""),
                 f"trained {done - diverged - skipped}, test settings evaluated {settings}"]
        if not final and pending + running:
            live = [t.trial_id for t in trials if t.status == Trial.RUNNING and t.trial_id not in self.finished]
            estimate = self.estimate(live, pending)
            if estimate:
                parts.append(estimate)
        best = self.best()
        if best is not None:
            parts.append(f"best {self.metric} {best[0]:.4g} at {best[1]}")
        return "; ".join(parts)

    def estimate(self, live: list[str], pending: int, now: float | None = None) -> str:
        """Time left: each running trial's remaining time from its own rate (its seconds over its
        share of training done, at its last report) and the pending trials at the mean trial time (finished trials',
        else the running trials' projected totals), spread over the trials running at once. Counts
        down between reports: a running trial's seconds grow with the clock. '' before any rate."""
        now = time.monotonic() if now is None else now
        projected, remaining, shares = [], 0.0, []
        for tid in live:
            if tid not in self.running:
                continue
            share, seconds, clock = self.running[tid]
            elapsed = seconds + (now - clock)
            shares.append(share)
            if share >= 0.01:
                total = seconds / share  # the rate at its last report; the clock since then counts down
                projected.append(total)
                remaining += max(0.0, total - elapsed)
        if self.seconds:
            mean, basis = sum(self.seconds) / len(self.seconds), f"{len(self.seconds)} finished trials"
        elif projected:
            mean, basis = sum(projected) / len(projected), f"the rates of {len(projected)} running trials"
        else:
            return ""
        unrated = len(live) - len(projected)  # running trials without a rate yet: half a trial each
        slots = max(1, len(live))
        left = (remaining + unrated * mean / 2 + pending * mean) / slots
        at = f"; running trials at {100 * sum(shares) / len(shares):.0f}% of their training on average" \
            if shares else ""
        return (f"about {_duration(left)} left (estimate: {basis}, {mean:.0f} s per trial, {slots} at a time"
                f"{at})")

    def best(self) -> tuple[float, dict] | None:
        scored = [(r[self.metric], r["point"]) for r in self.finished.values()
                  if isinstance(r.get(self.metric), (int, float)) and not math.isnan(r[self.metric])]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda s: s[0])


def _point(config: dict) -> dict:
    """The trial's training point and seed, from its Tune config."""
    cell = config.get("cell") or {}
    point = dict(cell.get("point") or config.get("point") or {})
    point.update({k: v for k, v in config.items() if k not in _SERVICE_KEYS and k not in ("point", "cell")})
    if "seed" in cell:
        point["seed"] = cell["seed"]
    return point


_SERVICE_KEYS = {"experiment", "preset", "overrides", "storage", "name", "meta", "threads", "checkpoint_seconds"}
