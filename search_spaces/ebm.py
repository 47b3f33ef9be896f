"""Experiments of the activation-noise EBM paper (activation-noise-ebm.txt, PROTOCOLS.md sec. 1).

Each function returns the Space of one preset. Cost notes are for the paper preset.

    python -m tuner.run grid_ebm --preset paper       # Fig. 3, Table 1, Fig. 7: 20 trainings/seed
    python -m tuner.run dist_ebm --preset paper       # Figs. 4, 6, 8: 7 laws x 20 alphas
    python -m tuner.run layers_ebm --preset paper     # Fig. 9: 5 placements
    python -m tuner.run dropout_ebm --preset paper    # Fig. 2: noise against dropout
    python -m tuner.run discriminative_ebm --preset paper   # Appendix E / Figs. 10-11
    python -m tuner.run ablate_ebm --preset fair      # what the findings depend on: 10 trainings/seed
    python -m tuner.run tune_ebm --search optuna      # TPE over alpha_train, alpha_test, law

Every one of them takes `--set noise_sharing=common` (EvalConfig.noise_sharing): one test-noise
draw per (image, draw) shared by all class autoencoders, drawn once; the default `independent` is
the paper's. ablate_ebm's noisy test settings name their sharing (it sweeps both), so it keeps them.
"""

from __future__ import annotations

from search_spaces.base import Experiment, Space, grid
from trainables.ebm import METHODS  # noqa: F401 (registered with this family)
from trainables.noise import DISTRIBUTIONS, NoiseParams

PAPER_ALPHAS = [round(0.1 * i, 1) for i in range(20)]  # {0.0, 0.1, ..., 1.9}
PAPER_PLACEMENTS = ["full", "odd", "even", "enc", "dec"]  # Fig. 9 (PLACEMENTS adds "hidden")
# Table 1's cells are cells of grid_ebm's grid: analysis.ebm.table1 shows the cells the rows have
# (the paper's ten are listed in PROTOCOLS.md sec. 1; table1(df, cells=...) narrows to them).


def _scale(preset: str) -> str:
    """The grid size of a preset: `fair` (a longer training at 16 px, n up to 1000) sweeps quick's grid."""
    return "quick" if preset == "fair" else preset


def _alphas(preset: str) -> list[float]:
    return {"paper": PAPER_ALPHAS, "quick": [0.0, 0.5, 1.0, 1.5], "smoke": [0.0, 0.5]}[_scale(preset)]


def _tests(alphas, distribution="gaussian", placement="full") -> list[dict]:
    return [{"distribution": distribution, "alpha": a, "placement": placement} for a in alphas]


def grid_ebm(preset: str) -> Space:
    """alpha_train x alpha_test, Gaussian, full placement; n up to 10^4 on paper (Table 1)."""
    alphas = _alphas(preset)
    fixed = {"n_checkpoints": (1, 10, 100, 1000, 10000)} if preset == "paper" else {}
    return Space(grid(alpha_train=alphas), lambda point: _tests(alphas), fixed)


# Fig. 6: three settings of each law's parameter. The paper names the parameter it varies per law
# (Sec. 4.4) but not the values; ours include Table 3's value (the NoiseParams default).
LAW_PARAMETERS = {
    "gaussian": ("gaussian_sigma", (0.5, 1.0, 2.0)),
    "cauchy": ("cauchy_scale", (0.5, 1.0, 2.0)),
    "uniform": ("uniform_width", (2.0, 4.0, 8.0)),
    "chi": ("chi_k", (1.0, 2.0, 3.0)),
    "lognormal": ("lognormal_sigma", (0.5, 1.0, 1.5)),
    "student_t": ("student_t_nu", (1.5, 2.0, 5.0)),
    "exponential": ("exponential_rate", (0.5, 1.0, 2.0)),
}


def _law_points(laws, alphas, with_parameters: bool) -> list[dict]:
    """(law, alpha) points, plus the law's other two parameter settings when asked. A point at
    Table 3's value leaves the parameter out, so its trial is the same as without the sweep."""
    points = []
    for law in laws:
        name, values = LAW_PARAMETERS[law]
        table3 = getattr(NoiseParams(), name)
        for value in (values if with_parameters else (table3,)):
            extra = {} if value == table3 else {name: value}
            points += [{"distribution_train": law, **extra, "alpha_train": a} for a in alphas]
    return points


def dist_ebm(preset: str) -> Space:
    """Each law with train = test alpha (Fig. 4), at three settings of its parameter (Fig. 6);
    at alpha 1 and Table 3's parameters, every test law (Fig. 8)."""
    alphas = {"paper": PAPER_ALPHAS[1:], "quick": [0.5, 1.0], "smoke": [1.0]}[_scale(preset)]
    laws = DISTRIBUTIONS if preset != "smoke" else ("gaussian", "cauchy")

    def tests(point):
        same = _tests([point["alpha_train"]], point["distribution_train"])
        table3 = LAW_PARAMETERS[point["distribution_train"]][0] not in point
        if point["alpha_train"] != 1.0 or not table3:
            return same
        return [{"distribution": d, "alpha": 1.0, "placement": "full"} for d in laws]

    return Space(_law_points(laws, alphas, with_parameters=preset != "smoke"), tests)


def layers_ebm(preset: str) -> Space:
    """5 x 5 train placement x test placement, Gaussian, alpha 1 (Fig. 9)."""
    places = PAPER_PLACEMENTS if preset != "smoke" else ["full", "dec"]
    return Space(grid(placement_train=places, alpha_train=[1.0]),
                 lambda point: [{"distribution": "gaussian", "alpha": 1.0, "placement": p} for p in places])


def dropout_ebm(preset: str) -> Space:
    """Activation noise (alpha, balanced) against dropout (rate c, clean test) (Fig. 2)."""
    levels = {"paper": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "quick": [0.2, 0.5],
              "smoke": [0.5]}[_scale(preset)]
    points = grid(alpha_train=levels) + grid(dropout_rate=levels)

    def tests(point):
        return _tests([point.get("alpha_train", 0.0)])

    return Space(points, tests)


def discriminative_ebm(preset: str) -> Space:
    """Standard classifiers with the same noise, alpha_train x alpha_test (Appendix E)."""
    alphas = [0.0, 0.5, 1.0] if preset != "smoke" else [0.0, 0.5]
    archs = {"paper": ["resnet18", "resnet50", "vgg16"], "quick": ["small_cnn"], "smoke": ["small_cnn"]}[preset]
    return Space(grid(arch=archs, alpha_train=alphas),
                 lambda point: [{"distribution": "gaussian", "alpha": a} for a in alphas])


ABLATION_CELLS = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.9, 0.9)]


def ablate_ebm(preset: str) -> Space:
    """The choices the paper leaves open, at the cells that carry its findings: train placement
    (full, hidden) x output activation (sigmoid, identity) per training; test-noise sharing
    (independent, common) at the matching test placement, n up to 1000, per test setting.
    Without training noise the placement changes nothing, so alpha_train 0 is trained once
    (placement full) per output activation: 10 trainings per seed, not 12."""
    cells = ABLATION_CELLS if preset != "smoke" else [(0.0, 0.0), (0.5, 0.5)]
    noisy = sorted({a for a, _ in cells if a > 0})
    places = ["full", "hidden"]
    outputs = ["sigmoid", "identity"] if preset != "smoke" else ["sigmoid"]
    fixed = {"n_checkpoints": (1, 10, 100, 1000)} if preset != "smoke" else {}

    def tests(point):
        return [{"distribution": "gaussian", "alpha": ae, "placement": point["placement_train"], "sharing": sharing}
                for at, ae in cells if at == point["alpha_train"]
                for sharing in (("independent",) if ae == 0 else ("independent", "common"))]

    points = (grid(alpha_train=[0.0], placement_train=["full"], output_activation=outputs)
              + grid(alpha_train=noisy, placement_train=places, output_activation=outputs))
    return Space(points, tests, fixed)


def tune_ebm(preset: str) -> Space:
    """TPE over alpha_train, alpha_test and the law (train law = test law), maximising accuracy."""
    return Space([], lambda point: _tests([point["alpha_test"]], point["distribution_train"]),
                 optuna={"alpha_train": ("uniform", 0.0, 2.0), "alpha_test": ("uniform", 0.0, 2.0),
                         "distribution_train": ("choice", list(DISTRIBUTIONS))},
                 test_only=("alpha_test",))


EXPERIMENTS = [
    Experiment("grid_ebm", "Fig. 3 / Table 1 / Fig. 7: alpha_train x alpha_test, Gaussian", "ebm", grid_ebm),
    Experiment("dist_ebm", "Figs. 4, 6, 8: the seven noise laws, train and test", "ebm", dist_ebm),
    Experiment("layers_ebm", "Fig. 9: train x test noise placement", "ebm", layers_ebm),
    Experiment("dropout_ebm", "Fig. 2: activation noise against dropout", "ebm", dropout_ebm),
    Experiment("discriminative_ebm", "Appendix E: noise in discriminative classifiers", "discriminative",
               discriminative_ebm, gpu_per_trial=0.5),
    Experiment("ablate_ebm", "Ablations: placement full/hidden x test-noise sharing x output activation", "ebm",
               ablate_ebm),
    Experiment("tune_ebm", "Optuna TPE over alpha_train, alpha_test and the noise law", "ebm", tune_ebm,
               search="optuna"),
]
