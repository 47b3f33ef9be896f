"""SE-SNN's re-identification study (trainables/reid.py's last section): the digits proxy's split,
stage 2's surgery against torchvision's own blocks, what stage 2 trains (the layers before the last
unit bit-identical), the label-noise levels, sigma used in training and never at test time, resume
in stage 2, and a smoke trial through the Method end to end."""

import math

import numpy as np
import pytest
import torch
import torchvision

from trainables.checks import ConfigError
from trainables.data import DataError, ReidProxyConfig, load_reid_proxy
from trainables.reid import (REID_METHOD, StochasticUnit, _branch, _fresh_like, _preactivation, extract_features,
                             reid_configs, split_backbone, train_reid)

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def smoke_data():
    cfg, _ = reid_configs("smoke")
    return REID_METHOD.load_data(cfg)


def configs(**overrides):
    return reid_configs("smoke", overrides)


def test_proxy_split():
    data = load_reid_proxy(ReidProxyConfig(proxy_dataset="digits", proxy_image_size=8, proxy_train_identities=7,
                                           proxy_train_limit=5, proxy_queries=4))
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 8, 8)
    assert data.train.pids.unique().tolist() == list(range(7)) and data.num_identities == 7
    assert torch.bincount(data.train.pids).tolist() == [5] * 7
    assert torch.equal(data.labels, data.train.pids)
    assert set(data.query.pids.tolist()) == set(data.gallery.pids.tolist()) == {7, 8, 9}
    assert torch.bincount(data.query.pids)[7:].tolist() == [4, 4, 4]
    assert not set(data.query.names) & set(data.gallery.names)
    for split in (data.query, data.gallery):  # cameras alternate 1, 2, 1, ... within each identity
        assert set(split.camids.tolist()) == {1, 2}
    for pid in (7, 8, 9):  # the queries are each identity's first images: cameras 1, 2, 1, 2
        assert data.query.camids[data.query.pids == pid].tolist() == [1, 2, 1, 2]
        # the gallery goes on from position 4: camera 1 first
        assert data.gallery.camids[data.gallery.pids == pid][:2].tolist() == [1, 2]


@pytest.mark.parametrize("field,value", [("proxy_dataset", "mnist"), ("proxy_train_identities", 10),
                                         ("proxy_queries", 0), ("proxy_train_limit", 0)])
def test_proxy_config_refuses(field, value):
    with pytest.raises(DataError, match=field):
        ReidProxyConfig(**{field: value})


def test_proxy_refuses_queries_that_leave_no_gallery():
    with pytest.raises(DataError, match="proxy_queries"):
        load_reid_proxy(ReidProxyConfig(proxy_dataset="digits", proxy_image_size=8, proxy_queries=1000))


@pytest.mark.parametrize("field,value", [("dataset", "market"), ("model", "vib"), ("loss", "mae"),
                                         ("noise_features", "imagenet"), ("extreme_images", 0),
                                         ("anchor_percentile", 0.0)])
def test_study_config_refuses(field, value):
    with pytest.raises(ConfigError, match=field):
        configs(**{field: value})


def test_sesnn_needs_a_stage_2():
    with pytest.raises(ConfigError, match="stage2_iterations"):
        configs(model="sesnn", stage2_iterations=0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_the_last_unit_s_preactivation_is_torchvision_s_block_before_its_relu(arch):
    """relu(_preactivation(block, h)) is the block's own forward (BasicBlock and Bottleneck), and
    trunk -> unit -> tail is the backbone's own forward."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None).eval()
    net.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 32)
    trunk, unit, tail = split_backbone(net)
    with torch.no_grad():
        h = trunk(x)
        assert torch.equal(torch.relu(_preactivation(unit, h)), unit(h))
        assert torch.equal(tail(torch.relu(_preactivation(unit, h))), net(x))
        fresh = _fresh_like(unit)  # the sigma / parallel layer: a new block of the unit's type and shape
        assert type(fresh) is type(unit) and _branch(fresh.eval(), h).shape == unit(h).shape
        assert not torch.equal(fresh.conv1.weight, unit.conv1.weight)


@pytest.mark.slow
def test_a_resnet_trial_on_the_proxy():
    """The ResNet path end to end (stage 2 on torchvision's BasicBlock), a few steps at 32 px."""
    cfg, ecfg = configs(model="sesnn", label_noise=0.2, backbone="resnet18", proxy_image_size=32,
                        stage1_iterations=2, stage2_iterations=2, noise_features="initial")
    data = REID_METHOD.load_data(cfg)
    res = train_reid(cfg, data)
    (row,) = REID_METHOD.evaluate(res.model, data, [{"features": "mu"}], cfg, ecfg)
    assert res.status == "ok" and res.columns["trunk_unchanged"] is True and 0 <= row["map"] <= 1
    assert isinstance(res.model.backbone.unit, torchvision.models.resnet.BasicBlock)
    assert res.columns["sigma_noisy"] > 0 and res.artefacts["sigma_high_images"].shape[1:] == (3, 32, 32)


def test_stage_2_trains_only_the_last_unit_its_new_layer_and_the_classifier(smoke_data):
    """SE-SNN's stage 2 starts from the network B's stage 1 ends with (same seed: stage 1 is
    plain cross-entropy for both), leaves every parameter and buffer before the last unit
    bit-identical and changes the unit and the classifier."""
    cfg, _ = configs(model="deterministic", stage2_iterations=0, label_noise=0.2)
    stage1 = train_reid(cfg, smoke_data).model
    cfg, _ = configs(model="sesnn", label_noise=0.2)
    res = train_reid(cfg, smoke_data)
    net = res.model
    assert isinstance(net.backbone, StochasticUnit) and net.backbone.kind == "sesnn"
    before = stage1.backbone[:2].state_dict()  # small_cnn: conv, relu | conv (the unit), relu, pool
    after = net.backbone.trunk.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not all(p.requires_grad for p in net.backbone.trunk.parameters())
    assert not torch.equal(stage1.backbone[2].weight, net.backbone.unit.weight)
    assert not torch.equal(stage1.fc.weight, net.fc.weight)
    assert res.columns["trunk_unchanged"] is True


def test_the_noise_levels_change_the_labels(smoke_data):
    """round(p * N) labels change at level p, the same ones for every method of a seed; none at 0."""
    n = len(smoke_data.labels)
    seen = {}
    for p in (0.0, 0.1, 0.2, 0.5):
        for model in ("deterministic", "sesnn"):
            cfg, _ = configs(model=model, label_noise=p, stage1_iterations=3, stage2_iterations=3)
            art = train_reid(cfg, smoke_data).artefacts
            noisy, flipped = torch.as_tensor(art["noisy_labels"]), torch.as_tensor(art["train_flipped"])
            assert torch.equal(noisy != smoke_data.labels, flipped)
            assert int(flipped.sum()) == math.floor(p * n + 0.5)
            seen.setdefault(p, []).append(noisy)
    for p, (b, s) in seen.items():
        assert torch.equal(b, s), p
    assert (seen[0.5][0] != seen[0.2][0]).sum() > 0


def test_resuming_in_stage_2_equals_an_uninterrupted_run(smoke_data):
    cfg, _ = configs(model="sesnn", label_noise=0.2, stage2_iterations=9)
    states = []
    whole = train_reid(cfg, smoke_data, callback=lambda p: states.append(p.state()))
    stage2 = [s for s in states if s["phase"] == "stage2"]
    assert len(stage2) == 3 and all(s["phase"] == "clean" for s in states[:2])
    resumed = train_reid(cfg, smoke_data, state=stage2[0])
    assert repr(resumed.columns) == repr(whole.columns) and resumed.history == whole.history
    assert resumed.epochs_done == whole.epochs_done
    assert all(np.array_equal(whole.artefacts[k], resumed.artefacts[k]) for k in whole.artefacts)


def test_sigma_is_used_in_training_and_never_at_test_time(smoke_data):
    cfg, ecfg = configs(model="sesnn", label_noise=0.2)
    res = train_reid(cfg, smoke_data)
    net, unit = res.model, res.model.backbone
    x = smoke_data.train.images[:8].float().div(255)
    # training mode: two draws differ, and the task loss alone reaches the sigma layer
    net.train()
    unit.generator = torch.Generator().manual_seed(1)
    a = net(x)
    unit.generator = torch.Generator().manual_seed(2)
    b = net(x)
    assert not torch.allclose(a, b)
    torch.nn.functional.cross_entropy(b, smoke_data.labels[:8]).backward()
    assert unit.extra.weight.grad is not None and unit.extra.weight.grad.abs().sum() > 0
    net.zero_grad()
    # test time: mu only. Evaluations are bit-identical, and a far larger sigma changes no feature.
    rows = [REID_METHOD.evaluate(net, smoke_data, [{"features": "mu"}], cfg, ecfg) for _ in range(2)]
    strip = lambda r: {k: v for k, v in r[0].items() if k != "eval_seconds"}
    assert strip(rows[0]) == strip(rows[1])
    before = extract_features(net, smoke_data.query.images)
    with torch.no_grad():
        unit.extra.bias.fill_(50.0)  # sigma about 50
    assert torch.equal(extract_features(net, smoke_data.query.images), before)
    net.train()
    assert not torch.allclose(net.features(smoke_data.query.images.float().div(255)), before)


@pytest.mark.parametrize("model,loss", [("sesnn", "ce"), ("deterministic", "forward"),
                                        ("deterministic", "bootstrap_hard"), ("deterministic", "bootstrap_soft")])
def test_a_smoke_trial_through_the_method(smoke_data, model, loss):
    cfg, ecfg = REID_METHOD.configs("smoke", {"model": model, "loss": loss, "label_noise": 0.2})
    res = REID_METHOD.train(cfg, smoke_data, None, None)
    (row,) = REID_METHOD.evaluate(res.model, smoke_data, [REID_METHOD.check_setting({"features": "mu"})], cfg, ecfg)
    assert res.status == "ok"
    assert 0 <= row["map"] <= 1 and row["rank1"] <= row["rank5"] <= row["rank10"] <= 1
    assert row["query_images"] == len(smoke_data.query.pids) and row["train_identities"] == 6
    c, art = res.columns, res.artefacts
    if model == "sesnn":
        k = cfg.extreme_images
        sigma = art["train_sigma"]
        assert art["sigma_high_images"].shape == (k, 3, 8, 8) and art["sigma_high_images"].dtype == np.uint8
        assert np.array_equal(art["sigma_high_images"], smoke_data.train.images[art["sigma_high_index"]].numpy())
        assert np.array_equal(np.sort(sigma)[::-1][:k], sigma[art["sigma_high_index"]])
        assert np.array_equal(np.sort(sigma)[:k], sigma[art["sigma_low_index"]])
        flipped = art["train_flipped"]
        assert c["sigma_noisy"] == pytest.approx(float(sigma[flipped].mean()))
        assert c["sigma_clean"] == pytest.approx(float(sigma[~flipped].mean()))
        assert np.all(art["train_log_sigma"] <= np.log(sigma) + 1e-6)  # Jensen: mean log sigma <= log mean sigma
        assert c["hinge_active_sample"] == pytest.approx(float(np.mean(art["train_log_sigma"] < cfg.margin)))
    else:
        assert math.isnan(c["sigma_noisy"]) and "train_sigma" not in art
    if loss == "forward":
        t = art["transition"]
        assert t.shape == (6, 6) and np.allclose(t.sum(1), 1, atol=1e-5)


def test_bad_settings_are_refused():
    assert REID_METHOD.check_setting({}) == {"features": "mu"}
    with pytest.raises(ConfigError, match="features"):
        REID_METHOD.check_setting({"features": "sample"})


# ---------------------------------------------------------------------------------------------
# Analysis: Table 4's layout and the findings on a fabricated frame


def fabricated(protocol: dict | None = None):
    """Three seeds of B, F and SE-SNN at 0% and 10%: SE-SNN = B + 5 points (+ a seed wobble), F =
    B - 3 points; SE-SNN's noisy images get sigma 0.2 above the clean ones."""
    import json

    import pandas as pd
    rows = []
    fields = {"dataset": "proxy", "backbone": "small_cnn", "weights": None, "stage1_iterations": 1500,
              "stage2_iterations": 750, "batch_size": 32, "omega": 0.01, "margin": math.log(4)} | (protocol or {})
    for seed in range(3):
        for p in (0.0, 0.1):
            base = 0.30 + 0.1 * seed - p
            for label, model, loss, shift in (("B", "deterministic", "ce", 0.0),
                                              ("F", "deterministic", "forward", -0.03),
                                              ("SE-SNN", "sesnn", "ce", 0.05 + 0.002 * seed)):
                rows.append(fields | {"method": "sesnn_reid", "family": "sesnn", "status": "ok", "label": label,
                                      "model": model, "loss": loss, "label_noise": p, "seed": seed, "features": "mu",
                                      "map": base + shift, "rank1": base + 0.2 + shift, "loss_tail_share": 0.001,
                                      "trial_key": f"{label}-{p}-{seed}",
                                      "sigma_clean": 1.0 if model == "sesnn" else float("nan"),
                                      "sigma_noisy": (1.2 + 0.01 * seed) if model == "sesnn" and p else float("nan"),
                                      "config_columns": json.dumps(sorted(fields) + ["model", "loss", "label_noise"])})
    return pd.DataFrame(rows)


def test_reid_table_in_table_4_layout():
    from analysis import sesnn, stats
    t = sesnn.reid_table(fabricated())
    assert list(t.index) == ["B", "F", "SE-SNN"]
    assert list(t.columns) == ["0% rank-1", "0% mAP", "10% rank-1", "10% mAP"]
    maps = [0.30 + 0.1 * s - 0.1 for s in range(3)]  # B at 10%: 20, 30, 40 %
    assert t.loc["B", "10% mAP"] == stats.fmt(np.mean(maps), np.std(maps, ddof=1) / math.sqrt(3))
    assert t.loc["B", "10% mAP"].startswith("30.00 ± 5.77")
    assert "paper" not in " ".join(t.to_numpy().ravel())  # the proxy: no paper values beside ours
    assert not t.attrs["comparable"]
    df = fabricated()
    gap = sesnn.reid_table(df[~((df["label"] == "F") & (df["label_noise"] == 0.1))])
    assert gap.loc["F", "10% mAP"] == "n/a (not run)" and gap.loc["F", "0% mAP"] == t.loc["F", "0% mAP"]
    paper = sesnn.reid_table(fabricated({"dataset": "market1501", "backbone": "resnet50", "stage1_iterations": 60000,
                                         "stage2_iterations": 20000, "weights": "/w/resnet50.pth"}))
    assert paper.attrs["comparable"] and "(paper 25.87)" in paper.loc["B", "10% mAP"]
    assert "(paper 53.21)" in paper.loc["SE-SNN", "10% rank-1"] and "(paper 70.2)" in paper.loc["SE-SNN", "0% mAP"]
    assert "paper" not in paper.loc["SE-SNN", "0% rank-1"]  # the paper gives no 0% rank-1
    assert "the paper: 27.3 vs 25.87" in " ".join(sesnn.reid_findings(fabricated({
        "dataset": "market1501", "backbone": "resnet50", "stage1_iterations": 60000, "stage2_iterations": 20000,
        "weights": "/w/resnet50.pth"})))
    assert "the paper: 27.3" not in " ".join(sesnn.reid_findings(fabricated()))


def test_reid_findings_follow_the_verdict_rule(tmp_path):
    from analysis import sesnn
    found = sesnn.reid_findings(fabricated())
    beats = [f for f in found if "SE-SNN beats B in mAP at 10%" in f]
    assert len(beats) == 1 and beats[0].endswith("holds (the interval excludes zero in the claimed direction).")
    weaker = [f for f in found if "F (forward correction) is below B" in f]
    assert len(weaker) == 1 and "holds" in weaker[0]
    sigma = [f for f in found if "larger σ" in f]
    assert len(sigma) == 1 and "= +21.00%, 95% CI [+18.52, +23.48]" in sigma[0] and "holds" in sigma[0]
    fig = sesnn.reid_sigma(fabricated(), tmp_path / "sigma.png")
    assert (tmp_path / "sigma.png").exists() and set(fig.plotted["which"]) == {"noisy", "clean"}
    section = sesnn.section(fabricated(), tmp_path)
    assert any(caption.startswith("Re-identification") for caption, _ in section["tables"])
    assert "reid_sigma" in section["figures"] and beats[0] in section["findings"]


def test_reid_extremes_draws_the_lowest_noise_run_s_images(tmp_path):
    """Fig. 3c reads the artefacts of the SE-SNN trial at the lowest noise level, first seed."""
    from analysis import sesnn
    df = fabricated()
    df = df[df["model"] == "sesnn"]
    for key in df["trial_key"]:
        df[df["trial_key"] == key].to_parquet(tmp_path / f"part-{key}.parquet")
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    np.savez(tmp_path / "part-SE-SNN-0.0-0.npz", sigma_high_images=images, sigma_low_images=images[::-1],
             sigma_high_index=np.array([2, 0]), sigma_low_index=np.array([1, 3]),
             train_sigma=np.array([1.5, 1.1, 1.9, 1.0]))
    df.attrs["source"] = str(tmp_path)
    fig = sesnn.reid_extremes(df, tmp_path / "fig3c.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["σ 1.9", "σ 1.5", "σ 1.1", "σ 1"] and (tmp_path / "fig3c.png").exists()
    assert "label noise 0%, seed 0" in fig.texts[0].get_text()
