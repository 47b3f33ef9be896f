"""noise_bench (issue 36): every arm trained and predicted by its own family's code on the shared base,
its refusals, the held-out split, the sampled inference against a slow reference, and the analysis
table's marking by the verdict rule on fabricated rows; the report of real smoke rows renders."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from analysis import noise_bench as nba
from analysis import report as report_module
from trainables import discriminative, ninr, noise_bench as nb, sesnn, vpn
from trainables.checks import ConfigError
from trainables.common import STATUS_OK
from trainables.data import load_dataset
from trainables.label_noise import noisy_labels
from tuner import registry

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = [{"shift": "clean", "strength": 0.0}, {"shift": "gaussian_noise", "strength": 0.2},
            {"shift": "fgsm", "strength": 0.1}, {"shift": "cw_l2", "strength": 0.0}]
FAMILY_OF = {"plain": ninr, "l2": ninr, "dropout": ninr, "input_noise": ninr, "in_ninr": ninr, "full_ninr": ninr,
             "activation_noise": discriminative, "vpn": vpn, "sesnn": sesnn, "vib": sesnn}


@pytest.fixture(scope="module")
def data():
    cfg, _ = nb.preset_configs("smoke")
    return load_dataset(cfg.data)


def smoke(**fields):
    return nb.preset_configs("smoke", fields)


def run(data, settings=SETTINGS, **fields):
    cfg, ecfg = smoke(**fields)
    res = nb.train(cfg, data)
    assert res.status == STATUS_OK, res.message
    return res, nb.evaluate(res.model, data, [nb.check_setting(s) for s in settings], cfg, ecfg, 0)


# ---------------------------------------------------------------------------------------------
# Every arm, through its family's own functions


@pytest.mark.parametrize("arm", nb.ARMS)
def test_every_arm_trains_and_evaluates_on_the_smoke_preset(data, arm):
    res, rows = run(data, arm=arm)
    method = FAMILY_OF[arm].METHOD
    assert (res.columns["arm_family"], res.columns["arm_method"]) == (method.family, method.name)
    assert [(r["shift"], r["strength"]) for r in rows] == [(s["shift"], s["strength"]) for s in SETTINGS]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    cfg, ecfg = smoke(arm=arm)
    passes = {"activation_noise": cfg.test_draws, "sesnn": cfg.test_draws, "vib": cfg.test_draws,
              "vpn": data.num_classes * cfg.vpn_draws}.get(arm, 1)
    assert {r["passes_per_image"] for r in rows} == {passes}
    cw = rows[-1]
    assert cw["test_images"] == ecfg.cw_images and 0 <= cw["attack_success_rate"] <= 1
    stochastic = arm in ("activation_noise", "vpn", "sesnn", "vib")
    assert cw["cw_fixed_draws"] == cw["cw_fresh_draws"] == stochastic  # both attacks on every stochastic arm


def test_the_worst_case_cw_row_is_never_above_either_attack_alone(data):
    """cw_draws=worst counts an image as broken when the fixed-draw or the fresh-draw attack breaks
    it: its accuracy is at most either one's, and at least what both together could leave."""
    cfg, ecfg = smoke(arm="activation_noise", cw_images=30)
    res = nb.train(cfg, data)
    acc = {}
    for mode in ("fixed", "fresh", "worst"):
        row = nb.evaluate(res.model, data, [{"shift": "cw_l2", "strength": 0.0}], cfg,
                          dataclasses.replace(ecfg, cw_draws=mode), 0)[0]
        acc[mode] = row["accuracy"]
        assert (row["cw_fixed_draws"], row["cw_fresh_draws"]) == (mode != "fresh", mode != "fixed")
    assert acc["worst"] <= min(acc["fixed"], acc["fresh"]) and acc["worst"] >= acc["fixed"] + acc["fresh"] - 1
    with pytest.raises(ConfigError, match=r"cw_draws='some'.*allowed: fixed, fresh, worst"):
        smoke(cw_draws="some")


def test_worst_case_takes_per_image_the_attack_that_breaks_it_and_the_smaller_one_where_both_do():
    from trainables.corruptions import worst_case
    x0 = torch.zeros(4, 1, 1, 2)
    xa, xb = torch.full_like(x0, 1.0), torch.full_like(x0, 0.5)  # b's perturbations are the smaller
    ra, rb = torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False])
    xs, right = worst_case(x0, (xa, ra), (xb, rb))
    assert right.tolist() == [True, False, False, False]
    assert [float(v) for v in xs[:, 0, 0, 0]] == [1.0, 0.5, 1.0, 0.5]  # neither: a; b breaks; a breaks; both: smaller


@pytest.mark.parametrize("arm", ["activation_noise", "vpn", "sesnn"])
def test_cw_attacks_one_function_on_every_stochastic_arm(data, arm):
    """With fixed draws the attacked forward gives an image the same output whatever images share
    its call and on every call (ART's search then sees one function); one draw per unit is shared
    by a call's images (identical images, identical outputs); with fresh draws two calls differ."""
    from trainables.corruptions import DrawMean
    res, _ = run(data, settings=[{"shift": "clean"}], arm=arm)
    cfg, ecfg = smoke(arm=arm)
    inf = nb.inference(res.model, cfg, data.num_classes, 100, ecfg.eot_draws)
    assert inf.shared_draws
    gen = torch.Generator().manual_seed(3)
    fixed = DrawMean(inf.forward(gen, True), inf.attack_draws, generator=gen)
    x = data.x_test[:6]
    with torch.no_grad():
        whole, part, again = fixed(x), fixed(x[2:5]), fixed(x)
        twins = fixed(x[:1].repeat(3, 1, 1, 1))
        fresh = DrawMean(inf.forward(torch.Generator().manual_seed(3), False), inf.attack_draws)
        first, second = fresh(x), fresh(x)
    assert torch.allclose(whole[2:5], part, atol=1e-5) and torch.equal(whole, again)
    assert torch.allclose(twins, twins[:1].expand_as(twins), atol=1e-6)
    assert not torch.allclose(first, second)


def test_the_family_columns_name_the_registered_methods():
    assert {a: (nb.method_of(smoke(arm=a)[0]).family, nb.method_of(smoke(arm=a)[0]).name) for a in nb.ARMS} == {
        **{a: ("ninr", "ninr") for a in ("plain", "l2", "dropout", "input_noise", "in_ninr", "full_ninr")},
        "activation_noise": ("ebm", "discriminative"), "vpn": ("vpn", "vpn"), "sesnn": ("sesnn", "sesnn"),
        "vib": ("sesnn", "sesnn")}
    assert registry.METHODS["discriminative"] is discriminative.METHOD  # the registered object itself


@pytest.mark.parametrize("arm, tuning", [(a, "default") for a in nb.ARMS] + [("sesnn", "tuned"), ("vpn", "tuned")])
def test_each_arm_is_trained_by_its_familys_function(data, monkeypatch, arm, tuning):
    spec = nb.ARM_SPECS[arm]
    original, seen = getattr(spec.module, spec.train), []

    def counting(cfg, d, callback=None, state=None):
        seen.append(cfg)
        return original(cfg, d, callback, state)

    monkeypatch.setattr(spec.module, spec.train, counting)
    cfg, _ = smoke(arm=arm, tuning=tuning)
    res = nb.train(cfg, data)
    grid = getattr(cfg, spec.grid) if tuning == "tuned" else ()
    assert len(seen) == len(grid) + 1  # one run per grid value, then the tested model
    assert isinstance(res.model.arm_cfg, type(seen[-1])) and res.model.arm_cfg == seen[-1]
    assert seen[-1].seed == cfg.seed and seen[-1].steps == cfg.steps and seen[-1].batch_size == cfg.batch_size


def test_tuned_keeps_the_grid_value_best_on_the_held_out_images_and_reads_no_test_image(data):
    cfg, _ = smoke(arm="l2", tuning="tuned", label_noise=0.4)
    res = nb.train(cfg, data)
    scores = {float(k): v for k, v in __import__("json").loads(res.columns["tuning_scores"]).items()}
    assert set(scores) == set(cfg.l2_grid)
    best = max(scores.values())
    assert res.columns["knob_value"] == min(v for v, s in scores.items() if s == best)  # ties: the smallest
    assert res.columns["val_accuracy"] == best
    blind = dataclasses.replace(data, x_test=torch.full_like(data.x_test, float("nan")),
                                y_test=torch.zeros_like(data.y_test))
    again = nb.train(cfg, blind)  # the test set is never read while training or tuning
    assert again.columns["tuning_scores"] == res.columns["tuning_scores"]


def test_a_tuned_trial_resumed_from_a_checkpoint_keeps_its_choice_and_ends_as_an_uninterrupted_one(data, monkeypatch):
    cfg, _ = smoke(arm="dropout", tuning="tuned")
    states = []
    whole = nb.train(cfg, data, callback=lambda p: states.append(p.state()))
    assert len(states) == 2 and states[0]["bench_value"] == whole.columns["knob_value"]
    calls = []
    original = ninr.train_ninr
    monkeypatch.setattr(ninr, "train_ninr", lambda *a: calls.append(1) or original(*a))
    resumed = nb.train(cfg, data, state=states[0])
    assert len(calls) == 1  # no grid run again: the choice came with the checkpoint
    assert resumed.columns["tuning_scores"] == whole.columns["tuning_scores"]
    for a, b in zip(whole.model.net.parameters(), resumed.model.net.parameters()):
        assert torch.equal(a, b)


def test_every_arm_trains_on_the_same_noisy_labels_without_the_held_out_images(data):
    cfg, _ = smoke(label_noise=0.4, seed=3)
    fit = nb.split(cfg, data)
    noisy, _, _ = noisy_labels(data.y_train, data.num_classes, 0.4, 3)
    assert len(fit.y_train) + len(fit.y_test) == len(data.y_train) and len(fit.y_test) == cfg.val_size
    # every image once: match each kept image back to its index in the full training set
    flat = data.x_train.flatten(1)
    index = [int((flat == row).all(1).nonzero()[0]) for row in torch.cat([fit.x_train, fit.x_test]).flatten(1)]
    assert sorted(index) == list(range(len(data.y_train)))
    assert torch.equal(torch.cat([fit.y_train, fit.y_test]), noisy[index])
    assert 0.25 < float((noisy != data.y_train).float().mean()) < 0.55


# ---------------------------------------------------------------------------------------------
# Inference against slow references


def test_activation_noise_prediction_is_the_mean_softmax_of_n_noisy_passes():
    torch.manual_seed(0)
    model = discriminative.build_classifier("mlp", 1, 3, 4, hidden=(5,))
    x = torch.rand(6, 1, 4, 4)
    got = discriminative.predict_probs(model, x, "gaussian", 0.7, 4, torch.Generator().manual_seed(9), batch_size=6)
    # by hand: Eq. 1 after each ReLU, z drawn from the same generator in layer order, 4 passes
    gen = torch.Generator().manual_seed(9)
    lin1, lin2 = model[1], model[3]
    want = torch.zeros(6, 3)
    for _ in range(4):
        h = torch.relu(lin1(x.flatten(1)))
        h = h + 0.7 * torch.randn(h.shape, generator=gen)
        want += F.softmax(lin2(h), 1) / 4
    assert torch.allclose(got, want, atol=1e-6)
    assert model.activation_noise.alpha == 0  # the model's own setting is restored


def test_vpn_scores_keep_their_values_with_the_graph_and_pass_the_gradient_to_the_input(data):
    res, _ = run(data, settings=[{"shift": "clean"}], arm="vpn")
    model, x = res.model.net, data.x_test[:5].clone().requires_grad_(True)
    with torch.no_grad():
        plain = vpn.vpn_scores(model, x, 10, 1, torch.Generator().manual_seed(1), 5)["score"]
    kept = vpn.vpn_scores(model, x, 10, 1, torch.Generator().manual_seed(1), 5, grad=True)["score"]
    assert torch.allclose(plain, kept.detach())
    kept.log().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fgsm_row_equals_a_hand_made_signed_gradient_step(data):
    res, rows = run(data, settings=[{"shift": "fgsm", "strength": 0.1}], arm="plain", steps=150)
    net = res.model.net
    x, y = data.x_test.clone().requires_grad_(True), data.y_test
    F.cross_entropy(net(x), y, reduction="sum").backward()
    adv = (data.x_test + 0.1 * x.grad.sign()).clamp(0, 1)
    with torch.no_grad():
        right, clean = net(adv).argmax(1) == y, net(data.x_test).argmax(1) == y
    assert rows[0]["accuracy"] == pytest.approx(float(right.float().mean()))
    moved = (adv - data.x_test).flatten(1).norm(dim=1)
    success = clean & ~right & (moved > 0)
    assert clean.float().mean() > 0.5 and success.any()  # a trained model that the attack moves
    assert rows[0]["attack_success_rate"] == pytest.approx(float(success.sum()) / max(1, int(clean.sum())))
    assert rows[0]["mean_l2"] == pytest.approx(float(moved[success].mean()))


def test_the_cost_of_a_trial_is_its_familys_times_the_trainings_of_a_tuned_one(monkeypatch):
    from trainables.cost import Estimate

    seen = []

    def family_cost(acfg, ecfg, settings, device):
        seen.append(acfg)
        return Estimate(10.0, 10.0, ["training: 100 steps at 10 steps/s"])

    monkeypatch.setattr(sesnn, "METHOD", dataclasses.replace(sesnn.METHOD, cost=family_cost))
    cfg, ecfg = smoke(arm="sesnn", tuning="tuned")
    est = nb.cost(cfg, ecfg, [], torch.device("cpu"))
    assert est.seconds == 10.0 * (len(cfg.omega_grid) + 1) and isinstance(seen[0], sesnn.SESNNConfig)
    assert nb.cost(*smoke(arm="sesnn"), [], torch.device("cpu")).seconds == 10.0
    monkeypatch.setattr(discriminative, "METHOD", dataclasses.replace(discriminative.METHOD, cost=None))
    unpriced = nb.cost(*smoke(arm="activation_noise"), [], torch.device("cpu"))  # a family that prices nothing
    assert unpriced.missing and "ebm/discriminative makes no projection" in unpriced.missing[0]


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("fields, field", [
    ({"arm": "noisy"}, "arm"), ({"tuning": "best"}, "tuning"), ({"label_noise": 1.5}, "label_noise"),
    ({"alpha": -1.0}, "alpha"), ({"dropout_grid": (0.1, 1.0)}, "dropout_grid"), ({"base": "resnet"}, "base"),
])
def test_a_bad_config_value_is_one_line_naming_the_field_and_the_allowed_values(fields, field):
    with pytest.raises(ConfigError) as caught:
        smoke(**fields)
    message = str(caught.value)
    assert message.startswith(f"{field}=") and "allowed" in message and "\n" not in message
    if field == "arm":
        assert all(a in message for a in nb.ARMS)


@pytest.mark.parametrize("fields, words", [
    ({"arm": "plain", "tuning": "tuned"}, "no strength knob"),
    ({"arm": "sesnn", "base": "cnn"}, "allowed: base='mlp'"),
    ({"arm": "vib", "stochastic_layers": (5,)}, "stochastic_layers"),  # the family's own refusal, up front
])
def test_a_combination_an_arm_cannot_train_is_refused_before_compute(fields, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        smoke(**fields)


@pytest.mark.parametrize("setting, field", [
    ({"shift": "fog", "strength": 0.1}, "shift"), ({"shift": "blur", "strength": -1.0}, "strength"),
    ({"shift": "contrast", "strength": 2.0}, "strength"), ({"shift": "cw_l2", "strength": 0.5}, "strength"),
])
def test_a_bad_shift_or_strength_names_the_field_and_the_allowed_values(setting, field):
    with pytest.raises(ConfigError) as caught:
        nb.check_setting(setting)
    assert str(caught.value).startswith(f"{field}=") and "allowed" in str(caught.value)


def test_the_cnn_base_trains_every_arm_but_the_snn_family(data):
    for arm in ("plain", "dropout", "activation_noise", "in_ninr", "vpn"):
        cfg, ecfg = smoke(arm=arm, base="cnn")
        res = nb.train(cfg, data)
        assert res.status == STATUS_OK
        net = res.model.net.base if arm == "vpn" else res.model.net  # VPN's f, not its generator
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [32, 64]  # the zoo's small_cnn, whichever family trains it


# ---------------------------------------------------------------------------------------------
# The paper preset: three data sets, the zoo's CIFAR ResNet18 on CIFAR-10


def test_the_paper_space_covers_three_data_sets_with_their_base_and_leaves_out_only_what_cannot_sit_on_resnet18():
    from search_spaces.noise_bench import noise_bench

    points = noise_bench("paper").train
    quick = noise_bench("quick").train
    by_data = {}
    for p in points:
        by_data.setdefault((p["dataset"], p["image_size"], p["channels"], p["base"]), []).append(
            {k: p[k] for k in ("arm", "tuning", "label_noise")})
    assert set(by_data) == {("mnist", 28, 1, "mlp"), ("fashion_mnist", 28, 1, "mlp"),
                            ("cifar10", 32, 3, "resnet18")}
    assert by_data[("mnist", 28, 1, "mlp")] == quick and by_data[("fashion_mnist", 28, 1, "mlp")] == quick
    left_out = {"dropout", "sesnn", "vib"}
    assert by_data[("cifar10", 32, 3, "resnet18")] == [q for q in quick if q["arm"] not in left_out]
    assert set(nb.RESNET_LEFT_OUT) == left_out
    note = nb.PRESET_NOTES["paper"]
    for arm in left_out:  # each left-out arm is named with its reason where the run prints the notes
        assert f"{arm} ({nb.RESNET_LEFT_OUT[arm]})" in note
    assert "stochastic MLPs only" in note and "in-place ReLU" in note
    for p in points:  # every point builds its configs (the families accept them) before any compute
        cfg, _ = nb.preset_configs("paper", p)
        assert (cfg.data.dataset, cfg.base) == (p["dataset"], p["base"])


def cifar_shaped(train_per_class=2, test=4):
    """A tiny in-memory set of CIFAR-10's shapes (3 x 32 x 32, 10 classes): what one step needs."""
    from trainables.cost import synthetic_data
    return synthetic_data(10, 3, 32, train_per_class, test, seed=5)


def resnet18_reference():
    """torchvision's ResNet18 made CIFAR-style by hand (3x3 stride-1 first conv, no max-pool)."""
    import torchvision
    ref = torchvision.models.resnet18(weights=None, num_classes=10)
    ref.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.maxpool = torch.nn.Identity()
    return ref


@pytest.mark.parametrize("arm", ["plain", "activation_noise", "vpn", "full_ninr"])
def test_the_resnet18_base_trains_one_step_of_each_family_on_a_cifar_shaped_batch(arm):
    data = cifar_shaped()
    cfg, ecfg = nb.preset_configs("smoke", {"arm": arm, "base": "resnet18", "dataset": "cifar10", "image_size": 32,
                                            "channels": 3, "steps": 1, "batch_size": 8, "val_size": 4})
    res = nb.train(cfg, data)
    assert res.status == STATUS_OK, res.message
    net = res.model.net.base if arm == "vpn" else res.model.net
    net = net.net if arm in ("plain", "full_ninr") else net  # NINR's NINModel wraps the network
    ref = resnet18_reference()
    assert [(n, p.shape) for n, p in net.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert isinstance(net.maxpool, torch.nn.Identity) and net.conv1.stride == (1, 1)
    assert res.epochs_done >= 1 and len(res.history) >= 1 and math.isfinite(res.columns["final_loss"])
    if arm == "full_ninr":  # a NIN on every Conv2d and the Linear of the ResNet
        layers = [m for m in ref.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert len(res.model.net.nodes.weights) == len(layers) == 21
    rows = nb.evaluate(res.model, data, [nb.check_setting({"shift": "clean", "strength": 0.0})], cfg, ecfg, 0)
    assert rows[0]["test_images"] == 4 and 0 <= rows[0]["accuracy"] <= 1


@pytest.mark.parametrize("arm", ["dropout", "sesnn", "vib"])
def test_an_arm_that_cannot_sit_on_resnet18_is_refused_naming_the_field_and_the_allowed_arms(arm):
    with pytest.raises(ConfigError) as caught:
        smoke(arm=arm, base="resnet18")
    message = str(caught.value)
    assert message.startswith("base='resnet18' with arm=") and nb.RESNET_LEFT_OUT[arm] in message
    assert "allowed arms on resnet18: plain, l2, input_noise, activation_noise, vpn, in_ninr, full_ninr" in message
    if arm == "dropout":  # the NINR family refuses it itself too, naming its own field
        with pytest.raises(ConfigError, match=r"^regularizer='dropout' is not defined for arch='resnet18'.*allowed"):
            ninr.NINRConfig(arch="resnet18", regularizer="dropout")


# ---------------------------------------------------------------------------------------------
# Analysis: the table, the marking by the rule, the paragraph


def fabricated(values: dict, shift_values: dict | None = None) -> pd.DataFrame:
    """Rows of arms (label -> accuracies per seed on the clean test), each also under gaussian noise
    at two strengths (`shift_values[label]` per seed, both strengths alike)."""
    rows = []
    for label, accs in values.items():
        arm, tuning = label.split(" (")
        for seed, acc in enumerate(accs):
            common = {"family": "noise_bench", "method": "noise_bench", "status": "ok", "arm": arm,
                      "tuning": tuning.rstrip(")"), "label_noise": 0.0, "seed": seed, "label": label,
                      "trial_key": f"{label}-{seed}", "train_seconds": 1.0, "passes_per_image": 1}
            rows.append(common | {"shift": "clean", "strength": 0.0, "accuracy": acc})
            for s in (0.1, 0.4):
                rows.append(common | {"shift": "gaussian_noise", "strength": s,
                                      "accuracy": (shift_values or values)[label][seed]})
    return pd.DataFrame(rows)


def test_the_best_arm_is_marked_only_where_the_rule_separates_it():
    clean = {"plain (default)": [0.90, 0.91, 0.92], "l2 (default)": [0.50, 0.52, 0.51],
             "sesnn (default)": [0.30, 0.31, 0.35]}
    under = {"plain (default)": [0.90, 0.50, 0.70], "l2 (default)": [0.60, 0.80, 0.65],
             "sesnn (default)": [0.1, 0.1, 0.1]}
    t = nba.table(fabricated(clean, under))
    assert t.loc["plain (default)", "clean"] == "91.0 [88.5, 93.5] (best)"  # mean .91, sd .01, t(2) 4.303
    assert not any(c.endswith("(best)") for c in t["Gaussian noise"])  # .70 vs .683: interval includes 0
    assert t.loc["l2 (default)", "clean"] == "51.0 [48.5, 53.5]"
    para = nba.which_noise(fabricated(clean, under))
    assert para[0].startswith("Which noise for clean: plain (default), ahead of the runner-up l2 (default) by +40.00")
    assert para[1].startswith("Which noise for Gaussian noise: undecided between plain (default) and l2 (default)")


def test_the_runner_up_is_another_method_not_the_same_method_tuned():
    clean = {"plain (default)": [0.90, 0.91, 0.92], "plain (tuned)": [0.905, 0.915, 0.925],
             "l2 (default)": [0.50, 0.52, 0.51]}
    sep = nba.table(fabricated(clean, clean)).attrs["separations"]["clean"]
    assert (sep["best"], sep["runner"]) == ("plain (tuned)", "l2 (default)") and sep["verdict"].holds
    only_one_method = {"plain (default)": [0.90, 0.91, 0.92], "plain (tuned)": [0.905, 0.915, 0.925]}
    assert nba.table(fabricated(only_one_method, only_one_method)).attrs["separations"]["clean"] is None


def test_the_figure_draws_each_arms_mean_over_seeds_at_each_strength():
    df = fabricated({"plain (default)": [0.8, 0.6], "l2 (default)": [0.5, 0.7]},
                    {"plain (default)": [0.4, 0.2], "l2 (default)": [0.3, 0.3]})
    fig = nba.accuracy_vs_strength(df)
    got = fig.plotted[fig.plotted["shift"] == "gaussian_noise"].set_index(["arm_name", "strength"])["mean"].to_dict()
    assert got == pytest.approx({("l2 (default)", 0.0): 0.6, ("l2 (default)", 0.1): 0.3, ("l2 (default)", 0.4): 0.3,
                                 ("plain (default)", 0.0): 0.7, ("plain (default)", 0.1): 0.3,
                                 ("plain (default)", 0.4): 0.3})
    assert "one line per arm, trained without label noise" in fig.caption


def test_a_shift_cell_averages_each_seed_over_the_strengths_before_the_seeds():
    df = fabricated({"plain (default)": [0.8, 0.6], "l2 (default)": [0.5, 0.5]})
    df.loc[(df["shift"] == "gaussian_noise") & (df["strength"] == 0.4) & (df["arm"] == "plain"), "accuracy"] = 0.2
    long, _ = nba.per_seed(df)
    got = long[(long["problem"] == "gaussian_noise") & (long["arm_name"] == "plain (default)")].set_index("seed")
    assert got["value"].to_dict() == pytest.approx({0: 0.5, 1: 0.4})  # (0.8 + 0.2) / 2, (0.6 + 0.2) / 2


# ---------------------------------------------------------------------------------------------
# The report of real smoke rows


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """The smoke experiment's trials (two seeds) through the real trial code, and their report (a
    minute on the shared 2-core box: the tests that read it are slow)."""
    from tuner import trial

    mp = pytest.MonkeyPatch()
    if "noise_bench" not in registry.EXPERIMENTS:  # not installed yet: loaded as a NOISETUNE_PLUGINS module is
        methods, experiments = registry.load(["search_spaces.noise_bench"])
        for name, value in methods.items():
            mp.setitem(registry.METHODS, name, value)
        for name, value in experiments.items():
            mp.setitem(registry.EXPERIMENTS, name, value)
    if "noise_bench" not in report_module.analysis_modules():
        mp.setenv("NOISETUNE_PLUGINS", "analysis.noise_bench")
    tmp = tmp_path_factory.mktemp("bench")
    try:
        for seed in (0, 1):
            for point in registry.EXPERIMENTS["noise_bench"].space("smoke").train:
                trial.run_trial({"experiment": "noise_bench", "preset": "smoke", "seed": seed, "point": point,
                                 "overrides": {}, "storage": str(tmp), "name": "nb", "meta": {}, "threads": 1},
                                local=True)
        info = report_module.build(tmp / "nb" / "results", tmp / "out")
    finally:
        mp.undo()
    return tmp / "out", info, tmp / "nb" / "results"


@pytest.mark.slow
def test_the_report_of_smoke_rows_has_the_table_the_figures_and_the_paragraph(smoke_report):
    out, info, _ = smoke_report
    html = (out / "report.html").read_text()
    assert info["sections"] == {"Family noise_bench: noise_bench: which noise for which problem": "ok"}
    assert "Accuracy % per arm and problem" in html and "<th class='text'>vpn (default)</th>" in html
    for arm in nb.ARMS:
        assert f"{arm} (default)" in html
    assert info["figures"] == ["accuracy_vs_strength"] and html.count("<figcaption>") == 1
    assert "Which noise for clean" in html and "Verdict rule" in html


@pytest.mark.slow
def test_the_report_of_smoke_rows_renders_in_headless_chromium(smoke_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: .ci/run installs it with apt-get install -y chromium")
    from PIL import Image

    out, _, _ = smoke_report
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
                    f"file://{out / 'report.html'}"], check=True, timeout=120, capture_output=True)
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 10, "screenshot is blank"


@pytest.mark.slow
def test_the_notebook_runs_on_the_smoke_rows(smoke_report):
    from tests.conftest import notebook_output

    text = notebook_output("noise_bench", smoke_report[2])
    assert "| vpn (default) |" in text and "Which noise for clean" in text and "One panel per shift" in text


def test_the_report_keeps_each_data_set_and_base_apart(tmp_path):
    mnist = fabricated({"plain (default)": [0.90, 0.91, 0.92], "l2 (default)": [0.50, 0.52, 0.51]},
                       {"plain (default)": [0.8, 0.8, 0.8], "l2 (default)": [0.4, 0.4, 0.4]})
    cifar = fabricated({"plain (default)": [0.60, 0.61, 0.62], "l2 (default)": [0.70, 0.72, 0.71]},
                       {"plain (default)": [0.3, 0.3, 0.3], "l2 (default)": [0.2, 0.2, 0.2]})
    df = pd.concat([mnist.assign(dataset="mnist", base="mlp"), cifar.assign(dataset="cifar10", base="resnet18")])
    got = nba.section(df, tmp_path)
    accuracy = [(title, t) for title, t in got["tables"] if "Accuracy %" in title]
    assert [title.split(":")[0] for title, _ in accuracy] == ["cifar10, resnet18", "mnist, mlp"]
    clean = {title.split(":")[0]: t.set_index(t.columns[0])["clean"].to_dict() for title, t in accuracy}
    assert clean["cifar10, resnet18"]["l2 (default)"].startswith("71.0") and \
        clean["mnist, mlp"]["plain (default)"].startswith("91.0")
    assert sorted(got["figures"]) == ["accuracy_vs_strength_cifar10_resnet18", "accuracy_vs_strength_mnist_mlp"]
    assert any(f.startswith("cifar10, resnet18: Which noise for clean: l2 (default)") for f in got["findings"])


def test_the_attack_table_says_which_cw_attack_each_arm_met():
    new = {"cw_fixed_draws": True, "cw_fresh_draws": True, "passes_per_image": 10}
    assert nba.cw_draws_text(new) == "worst of fixed and fresh"
    assert nba.cw_draws_text(new | {"cw_fresh_draws": False}) == "fixed"
    assert nba.cw_draws_text({"cw_fixed_draws": False, "cw_fresh_draws": False, "passes_per_image": 1}) == \
        "deterministic"
    # rows written before cw_fresh_draws: one attack, fresh on a sampled arm
    assert nba.cw_draws_text({"cw_fixed_draws": False, "cw_fresh_draws": math.nan, "passes_per_image": 100}) == "fresh"
    assert nba.cw_draws_text({"cw_fixed_draws": False, "passes_per_image": 1}) == "deterministic"
    assert nba.cw_draws_text({"cw_fixed_draws": True, "passes_per_image": 10}) == "fixed"
