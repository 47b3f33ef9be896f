"""VPN: the generator's noise, its gradients, Algorithm 2 against a slow reference, the baselines,
joint and frozen training, resume, bad input and the analysis tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from analysis import vpn as avpn
from search_spaces import vpn as vpn_space
from tests.reference_vpn import algorithm2
from tests.conftest import notebook_output
from trainables import vpn
from trainables.augment import AUGMENTATIONS, AugmentConfig, augment
from trainables.checks import ConfigError
from trainables.data import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    cfg, _ = vpn.preset_configs("smoke")
    return load_dataset(cfg.data)


def trained(data, **over):
    cfg, ecfg = vpn.preset_configs("smoke", over)
    return vpn.train_vpn(cfg, data), cfg, ecfg


def model_with_std(data, std_activation="abs", init_std=0.3, seed=0) -> vpn.VPNModel:
    """An untrained model whose generator outputs stds of order 1 (not the near-0 authors' init)."""
    torch.manual_seed(seed)
    shape = tuple(data.x_test.shape[1:])
    cfg, _ = vpn.preset_configs("smoke", {"generator": "dnn3", "std_activation": std_activation,
                                          "generator_init_std": init_std})
    return vpn.VPNModel(vpn._base(cfg, shape, data.num_classes), vpn._generator(cfg, shape, data.num_classes)).eval()


class Spy(torch.nn.Module):
    """Wraps the base model and keeps every input it is given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_generated_noise_has_zero_mean_and_the_learned_std(data):
    model = model_with_std(data)
    model.base = Spy(model.base)
    x = data.x_test[:4]
    draws = 400
    vpn.vpn_scores(model, x, data.num_classes, draws, torch.Generator().manual_seed(1), batch_images=64)
    xs = x.repeat(data.num_classes, 1, 1, 1)
    ys = torch.arange(data.num_classes).repeat_interleave(len(x))
    with torch.no_grad():
        sigma = model.generator(xs, ys)
    eps = torch.stack(model.base.seen) - xs  # (draws, C*N, 1, 8, 8)
    assert eps.shape[0] == draws
    z = (eps / sigma).flatten()
    assert sigma.min() > 0.05  # the check below is not about vanishing noise
    assert abs(float(z.mean())) < 4 / np.sqrt(z.numel())
    assert abs(float(z.std()) - 1) < 0.01
    assert sps.kstest(z[::7].numpy(), "norm").pvalue > 1e-3
    # per pixel, the empirical std over draws is the generator's std for that pixel and hypothesis
    ratio = eps.std(0) / sigma
    assert float((ratio - 1).abs().median()) < 0.05


@pytest.mark.parametrize("activation", ["abs", "softplus", "exp"])
def test_the_std_is_non_negative_and_capped(data, activation):
    model = model_with_std(data, activation, init_std=1.0)
    x, y = data.x_test[:8], data.y_test[:8]
    with torch.no_grad():
        sigma = model.generator(x, y)
        assert sigma.min() >= 0 and sigma.max() > 0.2
        model.generator.std_cap = 0.2
        capped = model.generator(x, y)
        assert capped.max() <= torch.tensor(0.2) and torch.equal(capped, sigma.clamp(max=0.2))


def test_the_label_enters_as_a_shift_of_every_pixel(data):
    model = model_with_std(data)
    seen = []
    model.generator.net.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x = data.x_test[:3]
    with torch.no_grad():
        model.generator(x, torch.tensor([0, 4, 9]))
    shift = seen[0] - x
    for j, c in enumerate([0, 4, 9]):
        assert torch.allclose(shift[j], torch.full_like(shift[j], 0.01 * c / 9), atol=1e-7)


def test_reparameterised_gradients_reach_the_generator(data):
    model = model_with_std(data).train()
    x, y = data.x_train[:16], data.y_train[:16]
    logits, _ = model.noisy(x, y, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.generator.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # and a joint training run moves the generator away from its initialisation
    res, cfg, _ = trained(data, generator="dnn3")
    torch.manual_seed(cfg.seed)
    shape = tuple(data.x_train.shape[1:])
    vpn._base(cfg, shape, data.num_classes)
    init = vpn._generator(cfg, shape, data.num_classes)
    moved = [not torch.equal(a, b) for a, b in zip(init.state_dict().values(), res.model.generator.state_dict().values())]
    assert any(moved)


def test_batched_algorithm_2_equals_the_slow_per_class_reference(data):
    model = model_with_std(data)
    x = data.x_test[:5]
    c, draws = data.num_classes, 3
    fast = vpn.vpn_scores(model, x, c, draws, torch.Generator().manual_seed(7), batch_images=64)
    gen = torch.Generator().manual_seed(7)
    z = [torch.randn((c * len(x), *x.shape[1:]), generator=gen) for _ in range(draws)]
    slow = algorithm2(model.generator.net, model.base, x, c, 0.01, z)
    assert torch.allclose(fast["score"], slow["score"], atol=1e-5)
    assert torch.equal(fast["score"].argmax(1), slow["prediction"])
    assert torch.allclose(fast["leak"], slow["leak"], atol=1e-6)
    assert torch.allclose(fast["sigma_mean"], slow["sigma_mean"], rtol=1e-5)
    # the noise matters here: with it, the scores differ from the clean softmax
    with torch.no_grad():
        clean = model.base(x).softmax(1)
    assert not torch.allclose(fast["score"], clean, atol=1e-3)


def test_more_draws_average_the_score(data):
    model = model_with_std(data)
    x = data.x_test[:6]
    one = [vpn.vpn_scores(model, x, data.num_classes, 1, torch.Generator().manual_seed(s))["score"] for s in range(8)]
    many = vpn.vpn_scores(model, x, data.num_classes, 64, torch.Generator().manual_seed(99))["score"]
    spread_one = torch.stack(one).std(0).mean()
    assert float((many - torch.stack(one).mean(0)).abs().mean()) < float(spread_one)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_baseline_changes_inputs_as_specified(data, name):
    x = data.x_train[:64]
    torch.manual_seed(0)
    out = augment(AugmentConfig(augmentation=name), x)
    assert out.shape == x.shape
    if name == "none":
        assert out is x
        return
    assert not torch.equal(out, x)
    per_image = (out - x).flatten(1).abs().amax(1) > 1e-6
    if name == "pixel_noise":  # N(0, 1) on about 10% of the pixels, the rest untouched
        changed = (out != x).float().mean()
        assert 0.05 < float(changed) < 0.15
        delta = (out - x)[out != x]
        assert abs(float(delta.std()) - 1) < 0.15
    elif name == "blur":  # smoother: less energy in pixel-to-pixel differences
        assert (out.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean())
    elif name == "color_jitter":  # per-image brightness/contrast factors: the mean intensity moves
        assert (out.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().max() > 0.01
    else:  # rotation, translation: geometry moves, intensities stay in range
        assert out.min() >= 0 and out.max() <= 1 + 1e-6
    # each image gets its own parameters; at 8 px a shift of up to 0.8 px rounds to 0 for ~40%
    assert per_image.float().mean() > (0.4 if name == "translation" else 0.8)
    if name != "pixel_noise":
        different = [not torch.allclose(out[i] - x[i], out[0] - x[0]) for i in range(1, 16)]
        assert any(different)


@pytest.mark.parametrize("name", ["rotation", "pixel_noise"])
def test_baselines_act_only_during_training(data, name, monkeypatch):
    res, cfg, ecfg = trained(data, augmentation=name)
    calls = []
    monkeypatch.setattr(vpn, "augment", lambda c, x: calls.append(1) or x)
    spy = Spy(res.model.base)
    res.model.base = spy
    rows, _ = vpn.evaluate(res.model, data, ["clean"], cfg, ecfg, 0)
    assert not calls
    assert torch.equal(torch.cat(spy.seen), data.x_test)
    assert rows[0]["inference"] == "clean"


def test_frozen_mode_leaves_the_base_model_bit_identical_to_the_baseline_trial(data):
    baseline, _, _ = trained(data)
    frozen, cfg, ecfg = trained(data, generator="dnn3", mode="frozen")
    joint, _, _ = trained(data, generator="dnn3")
    for name, tensor in baseline.model.base.state_dict().items():
        assert torch.equal(tensor, frozen.model.base.state_dict()[name]), name
    assert any(not torch.equal(t, joint.model.base.state_dict()[n]) for n, t in baseline.model.base.state_dict().items())
    assert frozen.epochs_done == 2 * baseline.epochs_done  # base phase, then generator phase
    assert len(frozen.artefacts["std_history"]) == baseline.epochs_done
    rows, arrays = vpn.evaluate(frozen.model, data, ["vpn", "clean"], cfg, ecfg, 0)
    assert frozen.columns["frozen_base"] == "trained_in_trial" and baseline.columns["frozen_base"] == ""
    clean = next(r for r in rows if r["inference"] == "clean")
    base_rows, _ = vpn.evaluate(baseline.model, data, ["clean"], *vpn.preset_configs("smoke"), 0)
    assert clean["accuracy"] == base_rows[0]["accuracy"]
    assert arrays["std_map"].shape == (2, *data.x_test.shape[1:])


def test_frozen_mode_keeps_batchnorm_statistics(data):
    res, _, _ = trained(data, base="resnet18", generator="dnn3", mode="frozen", steps=2)
    base_only, _, _ = trained(data, base="resnet18", steps=2)
    bn = {n: t for n, t in base_only.model.base.state_dict().items() if "running" in n}
    assert bn and all(torch.equal(t, res.model.base.state_dict()[n]) for n, t in bn.items())


@pytest.mark.parametrize("over", [{"generator": "dnn3"}, {"generator": "dnn3", "mode": "frozen"}])
def test_resuming_mid_training_equals_an_uninterrupted_run(data, over):
    full, cfg, _ = trained(data, steps=6, **over)
    saved = []
    vpn.train_vpn(cfg, data, callback=lambda p: saved.append(p.state()))
    # the middle checkpoint: for frozen, inside the generator phase (epochs 1-3 base, 4-6 generator)
    for state in saved[:-1]:
        again = vpn.train_vpn(cfg, data, state=state)
        for name, tensor in full.model.state_dict().items():
            assert torch.equal(tensor, again.model.state_dict()[name]), (state.get("phase"), name)
        assert np.array_equal(full.artefacts["std_history"], again.artefacts["std_history"])
        assert full.history == again.history
        for name in ("epoch_loss", "epoch_train_accuracy", "epoch_test_accuracy"):  # Fig. 3's curves, whole
            assert np.array_equal(full.artefacts[name], again.artefacts[name]), name


@pytest.mark.parametrize("over", [{}, {"generator": "dnn3"}, {"generator": "dnn3", "mode": "frozen"}])
def test_each_epoch_records_loss_training_and_test_accuracy(data, over):
    res, cfg, ecfg = trained(data, steps=6, **over)
    curves = {k: res.artefacts[k] for k in ("epoch_loss", "epoch_train_accuracy", "epoch_test_accuracy")}
    assert all(len(v) == res.epochs_done for v in curves.values()), curves
    assert list(curves["epoch_loss"]) == list(res.history)
    assert ((curves["epoch_train_accuracy"] >= 0) & (curves["epoch_train_accuracy"] <= 1)).all()
    # the last epoch's test accuracy is f's clean accuracy on the test set, as the trial scores it
    clean = vpn.evaluate(res.model, data, [{"inference": "clean"}], cfg, ecfg, 0)
    clean = clean[0] if isinstance(clean, tuple) else clean
    assert curves["epoch_test_accuracy"][-1] == pytest.approx(clean[0]["accuracy"])


@pytest.mark.parametrize("over, message", [
    ({"base": "resnet1"}, "base='resnet1'"),
    ({"generator": "vit"}, "generator='vit' is not allowed; allowed: none, dnn3, resnet18"),
    ({"augmentation": "mixup"}, "augmentation='mixup' is not allowed; allowed: none, rotation"),
    ({"noise_draws": 0}, "noise_draws=0"),
    ({"base": "vit_small", "patch_size": 3}, "patch_size=3 does not divide image_size=8"),
    ({"mode": "frozen"}, "mode='frozen' needs a generator"),
    ({"generator": "dnn3", "augmentation": "blur"}, "augmentation='blur' is a baseline"),
    ({"std_activation": "relu"}, "std_activation='relu' is not allowed; allowed: abs, softplus, exp"),
    ({"mode": "both"}, "mode='both' is not allowed; allowed: joint, frozen"),
])
def test_bad_config_names_the_field_and_the_allowed_values(over, message):
    with pytest.raises(ConfigError) as err:
        vpn.preset_configs("smoke", over)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_input_is_refused_by_the_cli_before_ray_starts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tuner.run", "vpn_table", "--preset", "smoke", "--storage",
                          str(tmp_path / "r"), "--set", "noise_draws=0"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "noise_draws=0" in out.stderr and "allowed" in out.stderr
    assert "Ray" not in out.stderr and not (tmp_path / "r").exists()


def test_bad_test_settings_are_one_line():
    with pytest.raises(ConfigError, match="inference='noisy' is not allowed; allowed: vpn, clean"):
        vpn.check_setting({"inference": "noisy"})
    with pytest.raises(ConfigError, match="allowed: inference"):
        vpn.check_setting({"alpha": 1})


def test_learning_digits_quickly(data):
    """DNN3 on the smoke subset at 40 steps learns well above chance (0.1), with and without a generator."""
    for over in ({}, {"generator": "dnn3"}):
        res, cfg, ecfg = trained(data, steps=40, **over)
        rows, _ = vpn.evaluate(res.model, data, ["clean"], cfg, ecfg, 0)
        assert rows[0]["accuracy"] > 0.5, over


# ---------------------------------------------------------------------------------------------
# Analysis


CONFIG = ["dataset", "image_size", "channels", "epochs", "steps", "batch_size", "lr", "noise_draws", "n_draws",
          "train_limit", "test_limit", "base", "mode", "generator", "augmentation"]


def frame(rows, labels=True):
    """Rows as a trial writes them: config_columns, and (unless labels=False, as older runs) the
    `label` of search_spaces/vpn.py, the one source of the paper's row names."""
    base = {"family": "vpn", "method": "vpn", "status": "ok", "dataset": "fashion_mnist", "image_size": 28,
            "channels": 1, "epochs": 40, "steps": 0, "batch_size": 256, "lr": 1e-3, "noise_draws": 1, "n_draws": 1,
            "train_limit": None, "test_limit": None, "base": "softmax_regression", "mode": "joint",
            "augmentation": "none", "std_ratio": float("nan"), "label_leak_rate": float("nan"), "trial_key": "k",
            "config_columns": json.dumps(sorted(CONFIG))}
    rows = [base | r for r in rows]
    if labels:
        rows = [r | {"label": vpn_space.label(r)} for r in rows]
    return pd.DataFrame(rows)


def cells(seeds, **kw):
    return [kw | {"seed": s, "accuracy": a} for s, a in enumerate(seeds)]


def baseline(seeds, **kw):
    return cells(seeds, generator="none", inference="clean", **kw)


def generator(seeds, clean=None, std_ratio=0.2, **kw):
    """A generator's trials: Algorithm 2 rows and, if given, the same trials scored by f alone."""
    kw = {"generator": "dnn3"} | kw
    rows = cells(seeds, inference="vpn", std_ratio=std_ratio, label_leak_rate=0.1, **kw)
    return rows + (cells(clean, inference="clean", **kw) if clean is not None else [])


def claims(rows, **kw) -> list[str]:
    return avpn.findings(frame(rows), **kw)


def test_labels_come_from_the_search_space():
    space = vpn_space.vpn_table("quick")
    names = {space.label(p) for p in space.train}
    assert names == {*vpn_space.BASELINE_LABELS.values(), *vpn_space.GENERATOR_LABELS.values(), "DNN3 (λ=1)"}
    assert space.label({"augmentation": "pixel_noise"}) == "Random Noise"
    assert vpn_space.vpn_noise_size("quick").label({"generator": "resnet18", "noise_draws": 4}) == "ResNet18"
    assert not hasattr(avpn, "BASELINE_LABELS") and not hasattr(avpn, "GENERATOR_LABELS")
    assert not hasattr(avpn, "KNOWN_CONFIG")


def test_table_layout_and_paper_values_only_where_the_protocol_matches():
    rows = (baseline([0.70, 0.72, 0.74]) + generator([0.75, 0.76, 0.77], clean=[0.74, 0.75, 0.76]))
    t = avpn.table(frame(rows))
    assert list(t.index) == ["Baseline", "DNN3", "DNN3 (No Noise)"]
    assert t.loc["Baseline", "fashion_mnist SR"] == "72.00 ± 1.15 (paper 74.97)"
    assert t.loc["DNN3", "fashion_mnist SR"].endswith("(paper 76.34)")
    small = frame(rows).assign(image_size=8)
    assert "paper" not in avpn.table(small).loc["Baseline", "fashion_mnist SR"]


def test_rows_without_a_label_say_so_and_are_named_by_their_fields(tmp_path):
    rows = baseline([0.70, 0.72, 0.74]) + generator([0.75, 0.76, 0.77], clean=[0.74, 0.75, 0.76])
    df = frame(rows, labels=False)
    t = avpn.table(df)
    assert list(t.index) == ["augmentation=none", "generator=dnn3", "generator=dnn3 (No Noise)"]
    assert not t.apply(lambda c: c.str.contains("paper")).any().any()  # no paper number for an unnamed row
    sec = avpn.section(df, tmp_path)
    assert sec["findings"][0].startswith("Labels: 9 of 9 rows carry no `label` column")
    assert "no `label` column" in sec["tables"][0][0]
    labelled = avpn.section(frame(rows), tmp_path / "l")
    assert not any("no `label`" in f for f in labelled["findings"]) and "label" not in labelled["tables"][0][0]


def test_a_noise_size_sweep_is_not_pooled_into_one_cell():
    rows = (baseline([0.70, 0.70]) + generator([0.80, 0.80], noise_draws=1) + generator([0.50, 0.50], noise_draws=8))
    t = avpn.table(frame(rows))
    assert t.loc["DNN3"].iloc[0].startswith("80.00")
    assert t.attrs["fixed"] == {"noise_draws": 1}


def test_configuration_columns_are_read_from_the_rows():
    """A field no hand list knows (here `label_coeff`) is kept apart because the rows name it."""
    rows = baseline([0.70, 0.70]) + generator([0.80, 0.80], label_coeff=0.01) + generator([0.50, 0.50], label_coeff=1.0)
    df = frame(rows)
    df["config_columns"] = json.dumps(sorted([*CONFIG, "label_coeff"]))
    t = avpn.table(df)
    assert t.attrs["fixed"] == {"label_coeff": 0.01} and t.loc["DNN3"].iloc[0].startswith("80.00")


def test_generator_vs_baseline_follows_the_verdict_rule():
    # a 3-seed effect at t ~ 3.5 (paired): the old 2-SEM rule said holds; the interval includes zero
    rows = baseline([0.70, 0.70, 0.70]) + generator([0.72, 0.74, 0.76])
    text = " ".join(claims(rows))
    assert "the generator DNN3 (joint) beats the Baseline" in text
    assert "+4.00 points, 95% CI [-0.97, +8.97]" in text and "3 paired seeds: undecided (the interval includes zero" in text
    # a paired effect on noisy seeds holds
    rows = baseline([0.70, 0.74, 0.72]) + generator([0.75, 0.80, 0.77])
    text = " ".join(claims(rows))
    assert "3 paired seeds: holds (the interval excludes zero" in text
    # worse on every seed: does not hold
    rows = baseline([0.70, 0.74, 0.72]) + generator([0.65, 0.68, 0.66])
    assert "does not hold" in " ".join(claims(rows))


def test_an_inert_generator_is_reported_inert_not_undecided():
    rows = baseline([0.70, 0.74, 0.72]) + generator([0.75, 0.80, 0.77], clean=[0.75, 0.80, 0.77], std_ratio=0.001)
    found = claims(rows)
    beats = next(f for f in found if "beats the Baseline" in f)
    assert "DNN3 (joint, inert)" in beats
    assert ": inert (the generator learned no noise: its learned std is 0.0010 of the input's (below " \
           "inert_std_ratio 0.01)" in beats and "undecided" not in beats
    assert "+5.33 points" in beats  # the estimate is still printed
    equal = next(f for f in found if "noise at test" in f)
    assert ": inert (the generator learned no noise" in equal
    assert avpn.diagnostics(frame(rows))["inert"].all()
    # the threshold is the rows' own field: at inert_std_ratio 0.0005 the same generator is not inert
    live = [r | {"inert_std_ratio": 0.0005} for r in rows]
    beats = next(f for f in claims(live) if "beats the Baseline" in f)
    assert "inert" not in beats and ": holds" in beats


def test_noise_at_test_vs_without_is_an_equality_claim_with_a_margin():
    rows = generator([0.80, 0.81, 0.80], clean=[0.800, 0.805, 0.801])
    found = " ".join(claims(rows))
    assert "about the same with noise at test as without it, within ±1 point both ways" in found
    assert "+0.13 points, 95% CI [-0.67, +0.93], p = 0.547, 3 paired seeds: holds (" in found
    assert "with noise not below without by more than the margin: holds (lower end -0.67 points above -1 points)" in found
    assert "without not below with noise by more than it: holds (lower end -0.93 points" in found
    # a margin of 0.1 points is too tight for this spread
    tight = " ".join(claims(rows, margin=0.001))
    assert "within ±0.1 points both ways" in tight and ": undecided (with noise not below" in tight
    # with noise a few points lower on every seed: does not hold
    rows = generator([0.76, 0.77, 0.76], clean=[0.80, 0.81, 0.80])
    assert ": does not hold (with noise not below without by more than the margin: does not hold (the whole interval " \
        "is below -1 points)" in " ".join(claims(rows))


def test_random_noise_spread_is_the_per_seed_std_without_a_verdict():
    rows = (baseline([0.70, 0.74, 0.72]) + baseline([0.60, 0.70, 0.65], augmentation="pixel_noise")
            + generator([0.75, 0.76, 0.77]))
    found = next(f for f in claims(rows) if "random noise is unstable" in f)
    rn = 100 * pd.Series([0.60, 0.70, 0.65]).std()
    assert f"Random Noise {rn:.2f} (range 60.00-70.00, 3 seeds)" in found
    assert "DNN3 1.00 (range 75.00-77.00, 3 seeds)" in found
    assert "no verdict" in found and "holds" not in found


def noise_size_frame():
    """vpn_noise_size-shaped rows: the DNN3 generator at m = 1, 2, 4, 8 over 3 seeds (no baselines)."""
    rng = np.random.default_rng(0)
    rows = []
    for m in (1, 2, 4, 8):
        acc = 0.80 + 0.01 * np.log2(m) + rng.normal(0, 0.01, 3)
        rows += generator(list(acc), clean=list(acc - 0.002), base="dnn3", noise_draws=m, trial_key=f"m{m}")
    return frame(rows)


def test_fig4_accuracy_against_noise_draws(tmp_path):
    df = noise_size_frame()
    sec = avpn.section(df, tmp_path)
    assert "noise_size" in sec["figures"] and (tmp_path / "noise_size.png").exists()
    fig = avpn.noise_size(df)
    plotted = fig.plotted.set_index("noise_draws")
    want = df[df["inference"] == "vpn"].groupby("noise_draws")["accuracy"].mean()
    assert list(plotted.index) == [1, 2, 4, 8]
    assert np.allclose(plotted["mean"], want.loc[plotted.index])
    assert (plotted["count"] == 3).all() and set(plotted["row"]) == {"DNN3"}
    # one claim per m against m=1, each with its interval
    fig4 = [f for f in sec["findings"] if "Claim (Fig. 4)" in f]
    assert len(fig4) == 3 and all("95% CI" in f for f in fig4)
    assert "with m=8 noise draws per example as with m=1" in fig4[-1]
    # the tables read m = 1 and say so; a table run has no Fig. 4
    assert "noise_draws=1" in sec["tables"][0][0]
    rows = baseline([0.70, 0.72, 0.74]) + generator([0.75, 0.76, 0.77])
    assert any(s.startswith("noise_size (") for s in avpn.section(frame(rows), tmp_path / "t")["skipped"])


@pytest.fixture(scope="module")
def smoke_run(shared_smoke):
    """A real vpn_frozen smoke run (2 seeds, tests/conftest.py) through the CLI: rows and artefacts on disk."""
    return shared_smoke("vpn_frozen")[0]


@pytest.mark.slow
def test_report_of_a_real_run_draws_std_maps_from_artefacts(smoke_run, tmp_path):
    from analysis import load
    from analysis.report import build

    df = load(smoke_run)
    assert set(df["mode"]) == {"joint", "frozen"} and set(df["frozen_base"].fillna("")) <= {"", "trained_in_trial"}
    info = build(smoke_run, tmp_path / "out")
    assert {"std_maps", "std_history", "training_curves"} <= set(info["figures"])
    df.attrs["source"] = str(smoke_run)
    curves = avpn.training_curves(df).plotted
    assert set(curves["curve"]) == set(avpn.CURVES) and (curves["count"] == 2).all()  # two seeds per epoch
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Table IV layout" in md and "Claim (Fig. 1): more std on the object than on the background" in md


@pytest.mark.slow
def test_notebook_executes_headless_on_a_real_run(smoke_run):
    out = notebook_output("vpn", smoke_run)
    assert "the generator DNN3 (frozen" in out and "beats the Baseline" in out


def test_the_clean_term_of_eq_13_is_measured_against_lambda_zero():
    rows = generator([0.75, 0.80, 0.77], std_ratio=0.2) + \
        generator([0.78, 0.83, 0.80], std_ratio=0.1, clean_loss_weight=1.0)
    rows = [r if "clean_loss_weight" in r else r | {"clean_loss_weight": 0.0} for r in rows]
    found = [f for f in claims(rows) if "The clean term of Eq. 13" in f]
    assert len(found) == 1 and "lambda 1 - 0 = +3.00 points" in found[0]
    assert "learned std 0.1 vs 0.2 of the input's" in found[0]
    space = vpn_space.vpn_table("quick")
    assert {space.label(p) for p in space.train if p.get("clean_loss_weight")} == {"DNN3 (λ=1)"}


def test_std_on_object_and_background_splits_pixels_by_the_image():
    images = np.zeros((2, 1, 4, 4))
    images[:, :, :2] = 0.8  # the top half is the object
    std = np.where(images > 0.5, 1.0, 0.25)
    assert avpn.std_on_object_and_background(std, images) == (1.0, 0.25)
    colour = np.repeat(images, 3, axis=1)
    assert avpn.std_on_object_and_background(np.repeat(std, 3, axis=1), colour) == (1.0, 0.25)


def test_the_std_map_claim_never_pools_two_configurations(monkeypatch):
    """Two generator arms that differ only in clean_loss_weight are two claims of 3 seeds each, not
    one of 6 (the quick vpn_table run of 2026-12-07 pooled them before this test)."""
    rows = generator([0.75, 0.80, 0.77], clean_loss_weight=0.0) + generator([0.78, 0.83, 0.80], clean_loss_weight=1.0)
    df = frame([r | {"trial_key": f"k{i}"} for i, r in enumerate(rows)])
    df["config_columns"] = json.dumps(sorted(CONFIG + ["clean_loss_weight"]))  # as a trial writes it
    df.attrs["source"] = "fabricated"
    image = np.zeros((1, 1, 4, 4))
    image[..., :2] = 1.0  # left half object, right half background
    std = np.where(image > 0, 2.0, 1.0)
    monkeypatch.setattr(avpn, "artefacts", lambda source, key: {"std_map": std, "std_map_images": image})
    found = [f for f in avpn.findings(df) if "Claim (Fig. 1)" in f]
    assert len(found) == 2
    assert all(f.count("2 / 1") == 3 and "3 seeds" in f for f in found), found
    assert any("clean_loss_weight=0" in f for f in found) and any("clean_loss_weight=1" in f for f in found)
