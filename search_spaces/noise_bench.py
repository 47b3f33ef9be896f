"""noise_bench (issue 36): every method of the four families on one base model, under the same shifts.

    python -m tuner.run noise_bench --preset smoke   # every arm once, seconds each
    python -m tuner.run noise_bench --preset quick   # 19 arm settings x 2 label noises x 5 seeds on digits
    python -m tuner.run noise_bench --preset paper --dry-run   # Fashion-MNIST at 28 px: the cost first

Training points: arm x tuning (paper default, or the knob tuned on the validation split; plain has
no knob) x label noise {0, 0.4}. Test settings of every trained model: clean, each corruption of
trainables/corruptions.py at three strengths, FGSM at three budgets, CW-L2.
"""

from __future__ import annotations

from search_spaces.base import Experiment, Space
from trainables.corruptions import THREE_STRENGTHS
from trainables.noise_bench import ARMS, METHODS  # noqa: F401 (registered with this family)

LABEL_NOISE = [0.0, 0.4]


def label(point: dict) -> str:
    """'sesnn (tuned)': the arm and how its knob was set (the rows' `label`)."""
    return f"{point.get('arm', 'plain')} ({point.get('tuning', 'default')})"


def _tests(strengths: dict):
    def tests(point: dict) -> list[dict]:
        return ([{"shift": "clean", "strength": 0.0}]
                + [{"shift": s, "strength": v} for s, vs in strengths.items() for v in vs]
                + [{"shift": "cw_l2", "strength": 0.0}])
    return tests


def noise_bench(preset: str) -> Space:
    """Every arm at its default and tuned, at both label noises; smoke: every arm once (default, no
    label noise) and one tuned arm at 40% label noise, gaussian noise at all three strengths and
    every other shift at its strongest."""
    if preset == "smoke":
        points = [{"arm": a, "tuning": "default", "label_noise": 0.0} for a in ARMS]
        points.append({"arm": "l2", "tuning": "tuned", "label_noise": 0.4})
        strengths = {s: (v if s == "gaussian_noise" else v[-1:]) for s, v in THREE_STRENGTHS.items()}
        return Space(points, _tests(strengths), label=label)
    points = [{"arm": a, "tuning": t, "label_noise": p} for a in ARMS for t in ("default", "tuned")
              for p in LABEL_NOISE if not (a == "plain" and t == "tuned")]
    return Space(points, _tests(THREE_STRENGTHS), label=label)


EXPERIMENTS = [
    Experiment("noise_bench", "the four kinds of beneficial noise side by side: one base model, the same shifts",
               "noise_bench", noise_bench, default_seeds={"quick": 5, "paper": 5}),
]
