"""noise_bench (issue 36): every method of the four families on one base model, under the same shifts.

    python -m tuner.run noise_bench --preset smoke   # every arm once, seconds each
    python -m tuner.run noise_bench --preset quick   # 19 arm settings x 2 label noises x 5 seeds on digits
    python -m tuner.run noise_bench --preset paper --dry-run   # MNIST, Fashion-MNIST, CIFAR-10: the cost first
    # paper: 102 trainings/seed (38 + 38 on the MLP, 26 on ResNet18); on 2 CPU cores each MLP trial
    # takes seconds to an hour, a CIFAR-10 ResNet18 trial days (GPU work; README has the numbers)

Training points: arm x tuning (paper default, or the knob tuned on the validation split; plain has
no knob) x label noise {0, 0.4}; on paper also x data set (PAPER_DATA: MNIST and Fashion-MNIST at
28 px with the MLP, CIFAR-10 at 32 px with the zoo's CIFAR-style ResNet18, without the arms that
cannot sit on it: trainables.noise_bench.RESNET_LEFT_OUT says why, and the preset's notes print it).
Test settings of every trained model: clean, each corruption of trainables/corruptions.py at three
strengths, FGSM at three budgets, CW-L2.
"""

from __future__ import annotations

from search_spaces.base import Experiment, Space
from trainables.corruptions import THREE_STRENGTHS
from trainables.noise_bench import ARMS, METHODS, RESNET_LEFT_OUT  # noqa: F401 (registered with this family)

LABEL_NOISE = [0.0, 0.4]
# The paper preset's data sets, each with its native size and the base for it.
PAPER_DATA = [{"dataset": "mnist", "image_size": 28, "channels": 1, "base": "mlp"},
              {"dataset": "fashion_mnist", "image_size": 28, "channels": 1, "base": "mlp"},
              {"dataset": "cifar10", "image_size": 32, "channels": 3, "base": "resnet18"}]


def label(point: dict) -> str:
    """'sesnn (tuned)': the arm and how its knob was set (the rows' `label`; the data set has its own
    column, so a paper report's table reads one data set at a time)."""
    return f"{point.get('arm', 'plain')} ({point.get('tuning', 'default')})"


def _tests(strengths: dict):
    def tests(point: dict) -> list[dict]:
        return ([{"shift": "clean", "strength": 0.0}]
                + [{"shift": s, "strength": v} for s, vs in strengths.items() for v in vs]
                + [{"shift": "cw_l2", "strength": 0.0}])
    return tests


def noise_bench(preset: str) -> Space:
    """Every arm at its default and tuned, at both label noises (paper: on each of PAPER_DATA);
    smoke: every arm once (default, no label noise) and one tuned arm at 40% label noise, gaussian
    noise at all three strengths and every other shift at its strongest."""
    if preset == "smoke":
        points = [{"arm": a, "tuning": "default", "label_noise": 0.0} for a in ARMS]
        points.append({"arm": "l2", "tuning": "tuned", "label_noise": 0.4})
        strengths = {s: (v if s == "gaussian_noise" else v[-1:]) for s, v in THREE_STRENGTHS.items()}
        return Space(points, _tests(strengths), label=label)
    points = [{"arm": a, "tuning": t, "label_noise": p} for a in ARMS for t in ("default", "tuned")
              for p in LABEL_NOISE if not (a == "plain" and t == "tuned")]
    if preset == "paper":
        points = [d | p for d in PAPER_DATA for p in points
                  if not (d["base"] == "resnet18" and p["arm"] in RESNET_LEFT_OUT)]
    return Space(points, _tests(THREE_STRENGTHS), label=label)


EXPERIMENTS = [
    Experiment("noise_bench", "the four kinds of beneficial noise side by side: one base model, the same shifts",
               "noise_bench", noise_bench, default_seeds={"quick": 5, "paper": 5}),
]
