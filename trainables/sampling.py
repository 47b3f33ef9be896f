"""Sampling inference shared by every family: running totals over draws, rows at each n checkpoint.

A prediction that averages a score over n noisy draws (the EBM's energies, a classifier's
softmax) is read at several n from ONE stream of draws: running sums per (class, image) are
added draw block by draw block and read out whenever a checkpoint n is passed, so memory is
flat in n and accuracy at n equals a fresh run with n_max = n.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from trainables.checks import ConfigError


def n_checkpoints(n_max: int) -> tuple[int, ...]:
    """1, 10, 100, ... up to n_max, with n_max itself last."""
    if not isinstance(n_max, int) or n_max < 1:
        raise ConfigError(f"n_max={n_max!r} is out of range; allowed: integers >= 1")
    points = [10**k for k in range(int(math.log10(n_max)) + 1) if 10**k <= n_max]
    return tuple(points) if points[-1] == n_max else (*points, n_max)


def check_checkpoints(points) -> tuple[int, ...]:
    """Sorted unique positive draw counts, or a ConfigError naming `n_checkpoints`."""
    points = tuple(points) if isinstance(points, (tuple, list)) else (points,)  # None, b"..": refused below
    if not points or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in points):
        raise ConfigError(f"n_checkpoints={points!r} is out of range; allowed: a non-empty list of integers >= 1")
    return tuple(sorted(set(points)))


class DrawTally:
    """Running per-(class, image) sums of a score over draws, read out at each checkpoint n.

    `pick` is "argmin" (energies: the lowest wins) or "argmax" (probabilities). With
    `moments`, the mean score and its across-draw variance are tallied too, and per image the
    evidence that says whether n is large enough: the gap between the best and the second-best
    class's n-draw mean score, the std of a class's n-draw mean (sqrt(var / n)), and the std of
    the gap itself, sqrt(var(s_best - s_second) / n), which the per-class std cannot give when
    classes share their draws (common random numbers make the two scores covary, so the gap
    varies less than either score). Their medians over images are `median_gap(n)`,
    `median_mean_std(n)` and `median_gap_std(n)`; the gap std needs the per-image class cross
    sums (C x C per image, summed draw block by draw block without a per-draw outer product).
    `seconds[n]` is the time spent in add_block up to checkpoint n, summed over blocks: a call of
    per_draw never runs past the next checkpoint (rounded up to a multiple of `align`, the draws
    per_draw makes together), so no draw after n is counted at n.
    `predictions(n)` is every image's chosen class in test-set order: two models compared on the
    same images need it for the paired error of their accuracy difference.
    """

    def __init__(self, checkpoints, pick: str = "argmin", moments: bool = True):
        self.checkpoints, self.pick, self.moments = tuple(checkpoints), pick, moments
        self.correct = {n: 0 for n in self.checkpoints}
        self.mean = {n: 0.0 for n in self.checkpoints}
        self.var = {n: 0.0 for n in self.checkpoints}
        self.seconds = {n: 0.0 for n in self.checkpoints}
        self.gaps = {n: [] for n in self.checkpoints}
        self.mean_stds = {n: [] for n in self.checkpoints}
        self.gap_stds = {n: [] for n in self.checkpoints}
        self.chosen = {n: [] for n in self.checkpoints}

    def add_block(self, per_draw: Callable[[int, int], torch.Tensor], labels, n_total: int, step: int,
                  clock: Callable[[], float] | None = None, align: int = 1) -> None:
        """per_draw(d0, d1) -> scores (G, B, d1 - d0) for draws d0..d1-1 of one image block, called
        with at most `step` draws, ending at each checkpoint rounded up to a multiple of `align`."""
        s1 = s2 = s12 = 0.0
        done = 0
        t0 = clock() if clock else 0.0
        while done < n_total:
            due = next((n for n in self.checkpoints if n > done), n_total)
            upto = min(n_total, done + step, -(-due // align) * align)
            e = per_draw(done, upto).double()
            c1 = s1 + e.cumsum(-1)
            c2 = s2 + (e * e).cumsum(-1) if self.moments else None
            crosses = self.moments and e.shape[0] > 1 and self.checkpoints[-1] > 1  # only the gap std reads them
            s12_next = s12 + torch.einsum("gbd,hbd->ghb", e, e) if crosses else 0.0
            for n in self.checkpoints:
                if done < n <= upto:
                    sum1 = c1[..., n - done - 1]
                    chosen = sum1.argmin(0) if self.pick == "argmin" else sum1.argmax(0)
                    self.correct[n] += int((chosen == labels).sum())
                    self.chosen[n].append(chosen.cpu())
                    if clock:
                        self.seconds[n] += clock() - t0
                    if self.moments:
                        sum2 = c2[..., n - done - 1]
                        mean = sum1 / n
                        self.mean[n] += float(mean.mean(0).sum())
                        if mean.shape[0] > 1:
                            two = mean.topk(2, dim=0, largest=self.pick == "argmax")
                            self.gaps[n].append((two.values[0] - two.values[1]).abs().cpu())
                        if n > 1:
                            var = (sum2 - sum1 * sum1 / n) / (n - 1)
                            self.var[n] += float(var.mean(0).sum())
                            self.mean_stds[n].append((var.clamp_min(0) / n).sqrt().flatten().cpu())
                            if crosses:
                                cross = s12_next if n == upto else \
                                    s12 + torch.einsum("gbd,hbd->ghb", e[..., :n - done], e[..., :n - done])
                                self.gap_stds[n].append(self._gap_std(two.indices, sum1, sum2, cross, n).cpu())
            s12 = s12_next
            s1 = c1[..., -1:]
            s2 = c2[..., -1:] if self.moments else 0.0
            done = upto

    @staticmethod
    def _gap_std(top2, sum1, sum2, cross, n: int) -> torch.Tensor:
        """Per image, the std of (best - second-best) class's n-draw mean score, from the two
        classes' indices (2, B), the sums of the scores (G, B), their squares (G, B) and their
        cross products (G, G, B)."""
        a, b = top2
        img = torch.arange(sum1.shape[1], device=sum1.device)
        sum_d = sum1[a, img] - sum1[b, img]
        sum_d2 = sum2[a, img] + sum2[b, img] - 2 * cross[a, b, img]
        var = (sum_d2 - sum_d * sum_d / n) / (n - 1)
        return (var.clamp_min(0) / n).sqrt()


    def predictions(self, n: int) -> list[int]:
        return torch.cat(self.chosen[n]).tolist() if self.chosen[n] else []

    def median_gap(self, n: int) -> float:
        return float(torch.cat(self.gaps[n]).median()) if self.gaps[n] else float("nan")

    def median_mean_std(self, n: int) -> float:
        return float(torch.cat(self.mean_stds[n]).median()) if self.mean_stds[n] else float("nan")

    def median_gap_std(self, n: int) -> float:
        return float(torch.cat(self.gap_stds[n]).median()) if self.gap_stds[n] else float("nan")


def rows_at_checkpoints(points, noisy: bool, at: Callable[[int], dict]) -> list[dict]:
    """One row per checkpoint n. A noiseless setting is one deterministic pass: reported at every
    n with n_effective = 1. `at(m)` gives the row's values after m draws."""
    return [{"n": n, "n_effective": n if noisy else 1} | at(n if noisy else 1) for n in points]


def rows_at_largest_n(rows: list[dict]) -> list[dict]:
    """The rows a trial's headline comes from: those at its largest n."""
    scored = [r for r in rows if r.get("n") is not None]
    if not scored:
        return []
    n_max = max(r["n"] for r in scored)
    return [r for r in scored if r["n"] == n_max]
