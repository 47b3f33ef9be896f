"""Re-identification building blocks: the Market-1501 reader on small JPEG files in the published
layout, the Market-1501 evaluation against a hand-worked case and a slow per-query reference, the
similarity-based label noise on hand-made features, and the identity classifier's shapes."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from trainables.checks import ConfigError
from trainables.data import DataError, MarketConfig, load_market1501, parse_market1501_name
from trainables.reid import (ReidConfig, build_reid_model, extract_features, feature_distances, market1501_eval,
                             similarity_label_noise)

# ---------------------------------------------------------------------------------------------
# Market-1501 reader

# split -> file names; each image is filled with a colour made from its index, so the test can tell
# which file became which row.
MARKET = {
    "bounding_box_train": ["0007_c3s2_000101_02.jpg", "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                           "-1_c1s1_000001_00.jpg"],  # a junk image in train: dropped (no identity)
    "query": ["0001_c1s1_001051_00.jpg", "0003_c2s1_000301_00.jpg"],
    "bounding_box_test": ["0001_c1s1_001101_01.jpg", "0001_c4s2_000201_01.jpg", "-1_c1s1_000401_03.jpg",
                          "0000_c3s1_000008_04.jpg", "0003_c5s3_000701_02.jpg"],
}


def colour(k: int) -> tuple[int, int, int]:
    return (40 * k % 256, 255 - 30 * k % 256, 100)


def write_market(base: Path) -> None:
    """The three split folders with 64 x 32 JPEGs (the real ones are 128 x 64) and a Thumbs.db,
    which the published archive also holds."""
    for split, names in MARKET.items():
        (base / split).mkdir(parents=True)
        (base / split / "Thumbs.db").write_bytes(b"\x00junk")
        for k, name in enumerate(names):
            Image.new("RGB", (32, 64), colour(k)).save(base / split / name, quality=95)


def test_parse_market1501_name():
    assert parse_market1501_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market1501_name("-1_c6s4_002152_01.jpg") == (-1, 6)
    assert parse_market1501_name("1501_c6s4_001877_03.jpg") == (1501, 6)
    with pytest.raises(DataError, match="PPPP_cCsS_FFFFFF_NN"):
        parse_market1501_name("2_c1s1_000451_03.jpg")


@pytest.mark.parametrize("inside", [True, False])
def test_market1501_reader(tmp_path, inside):
    write_market(tmp_path / "Market-1501-v15.09.15" if inside else tmp_path)
    data = load_market1501(MarketConfig(data_root=str(tmp_path), image_height=16, image_width=8))
    assert data.train.names == ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s2_000101_02.jpg"]
    assert data.train.pids.tolist() == [2, 2, 7] and data.train.camids.tolist() == [1, 2, 3]
    assert data.labels.tolist() == [0, 0, 1] and data.num_identities == 2
    assert data.query.pids.tolist() == [1, 3] and data.query.camids.tolist() == [1, 2]
    # Sorted by name: "-1_" sorts before digits; junk and the distractor stay in the gallery.
    assert data.gallery.pids.tolist() == [-1, 0, 1, 1, 3] and data.gallery.camids.tolist() == [1, 3, 1, 4, 5]
    splits = ((data.train, "bounding_box_train"), (data.query, "query"), (data.gallery, "bounding_box_test"))
    for split, folder in splits:
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(split.names), 3, 16, 8)
        for row, name in zip(split.images, split.names):  # each row is its file's colour (JPEG: near)
            expected = torch.tensor(colour(MARKET[folder].index(name)), dtype=torch.float32)
            assert (row.float().mean((1, 2)) - expected).abs().max() < 4


def test_market1501_root_from_environment(tmp_path, monkeypatch):
    write_market(tmp_path / "Market-1501-v15.09.15")
    monkeypatch.setenv("NOISETUNE_DATA", str(tmp_path))
    assert load_market1501(MarketConfig(image_height=8, image_width=4)).query.pids.tolist() == [1, 3]


def test_market1501_identity_limit(tmp_path):
    write_market(tmp_path)
    data = load_market1501(MarketConfig(data_root=str(tmp_path), image_height=8, image_width=4, identity_limit=1))
    assert data.train.pids.tolist() == [2, 2] and data.num_identities == 1
    assert data.query.pids.tolist() == [1] and data.gallery.pids.tolist() == [1, 1]


def test_market1501_missing_and_bad_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_market1501(MarketConfig(data_root=str(tmp_path)))
    message = str(info.value)
    assert str(tmp_path / "Market-1501-v15.09.15" / "bounding_box_train") in message
    assert all(s in message for s in ("query/", "bounding_box_test/", "PPPP_cCsS_FFFFFF_NN.jpg", "never downloaded"))
    write_market(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "query" / "person7.jpg")
    with pytest.raises(DataError, match="person7.jpg"):
        load_market1501(MarketConfig(data_root=str(tmp_path)))


@pytest.mark.parametrize("field,value", [("image_height", 2), ("image_width", 1.5), ("identity_limit", 0),
                                         ("data_root", 3)])
def test_market_config_refuses(field, value):
    with pytest.raises(DataError, match=field):
        MarketConfig(**{field: value})


# ---------------------------------------------------------------------------------------------
# Market-1501 evaluation

# Gallery: (person id, camera).
G_PIDS = [1, 1, -1, 0, 2, 1, 2]
G_CAMS = [1, 2, 3, 2, 1, 3, 2]
Q_PIDS = [1, 2, 3]
Q_CAMS = [1, 1, 2]
DIST = np.array([
    # q0 (id 1, cam 1), ranked g0 g2 g3 g1 g4 g6 g5. g0 is id 1 in cam 1: removed; g2 junk: removed.
    # Kept ranking g3 g1 g4 g6 g5, correct matches g1 and g5 at positions 2 and 5 (1-based).
    # hits AP = (1/2 + 2/5) / 2 = 0.45.
    # trapezoid (compute_AP.m): recall steps of 1/2, precision before/at each hit: (0 + 1/2)/2 at g1,
    # (1/4 + 2/5)/2 at g5 -> AP = 1/2 * 0.25 + 1/2 * 0.325 = 0.2875. First match at rank 2.
    [0.1, 0.4, 0.2, 0.3, 0.5, 0.7, 0.6],
    # q1 (id 2, cam 1), ranked g4 g6 g0 g1 g2 g3 g5. g4 is id 2 in cam 1: removed. g6 first: AP 1, rank 1.
    [0.25, 0.35, 0.45, 0.55, 0.05, 0.65, 0.15],
    # q2 (id 3): not in the gallery, skipped.
    [0.3, 0.2, 0.1, 0.4, 0.5, 0.6, 0.7],
])


def test_market1501_eval_hand_case():
    hits = market1501_eval(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    assert hits["valid_queries"] == 2
    assert hits["map"] == pytest.approx((0.45 + 1.0) / 2)
    assert (hits["rank1"], hits["rank5"], hits["rank10"]) == (0.5, 1.0, 1.0)
    trapezoid = market1501_eval(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ranks=(1, 2), ap_rule="trapezoid")
    assert trapezoid["map"] == pytest.approx((0.2875 + 1.0) / 2)
    assert (trapezoid["rank1"], trapezoid["rank2"]) == (0.5, 1.0)


def test_market1501_eval_refuses():
    with pytest.raises(ConfigError, match="ap_rule"):
        market1501_eval(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap_rule="interpolated")
    with pytest.raises(ValueError, match="does not match"):
        market1501_eval(DIST[:, :5], Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="no query"):
        market1501_eval(DIST[2:], Q_PIDS[2:], G_PIDS, Q_CAMS[2:], G_CAMS)


def reference_eval(dist, q_pids, g_pids, q_cams, g_cams, ranks):
    """Slow per-query reference: Python sort and filter; AP by sklearn ("hits") and by a line-for-line
    transcription of the benchmark's MATLAB compute_AP.m ("trapezoid")."""
    firsts, hits_ap, trap_ap = [], [], []
    for i in range(len(q_pids)):
        ranked = sorted(range(len(g_pids)), key=lambda j: (dist[i][j], j))
        kept = [j for j in ranked if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        good = [g_pids[j] == q_pids[i] for j in kept]
        if not any(good):
            continue
        firsts.append(good.index(True))
        hits_ap.append(average_precision_score(good, [-dist[i][j] for j in kept]))
        old_recall, old_precision, ap, found = 0.0, 1.0, 0.0, 0
        for n, g in enumerate(good):
            found += g
            recall, precision = found / sum(good), found / (n + 1)
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
        trap_ap.append(ap)
    cmc = {f"rank{k}": sum(f < k for f in firsts) / len(firsts) for k in ranks}
    return np.mean(hits_ap), np.mean(trap_ap), cmc, len(firsts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_market1501_eval_against_slow_reference(seed):
    rng = np.random.default_rng(seed)
    q_pids, q_cams = rng.integers(1, 8, 25), rng.integers(1, 4, 25)
    g_pids, g_cams = rng.choice([-1, 0, 1, 2, 3, 4, 5, 6, 7], 80), rng.integers(1, 4, 80)
    dist = rng.random((25, 80))  # continuous: no ties, where sklearn would group equal scores
    ranks = (1, 3, 5, 10)
    hits_ap, trap_ap, cmc, valid = reference_eval(dist.tolist(), q_pids.tolist(), g_pids.tolist(),
                                                  q_cams.tolist(), g_cams.tolist(), ranks)
    hits = market1501_eval(dist, q_pids, g_pids, q_cams, g_cams, ranks=ranks)
    trapezoid = market1501_eval(dist, q_pids, g_pids, q_cams, g_cams, ranks=ranks, ap_rule="trapezoid")
    assert hits["valid_queries"] == trapezoid["valid_queries"] == valid
    assert hits["map"] == pytest.approx(hits_ap, abs=1e-12)
    assert trapezoid["map"] == pytest.approx(trap_ap, abs=1e-12)
    assert {k: hits[k] for k in cmc} == pytest.approx(cmc, abs=1e-12)


def test_feature_distances():
    a, b = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 5.0]])
    expected = [[math.dist(p, q) for q in b.tolist()] for p in a.tolist()]
    np.testing.assert_allclose(feature_distances(a, b).numpy(), expected, rtol=0, atol=1e-12)
    cosine = [[1 - float(p @ q) / float(p.norm() * q.norm()) for q in b[1:]] for p in a]
    np.testing.assert_allclose(feature_distances(a, b[1:], "cosine").numpy(), cosine, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Similarity-based label noise

# Identities 0, 1, 2 (A, B, C). Nearest image of another identity, Euclidean:
# 0 (0,0): 5 at 0.5 -> C;  1 (0.1,0): 5 at 0.51 (2 at 0.9) -> C;  2 (1,0): 1 at 0.9 -> A;
# 3 (5,5): 4 at 1 -> C;  4 (5,6): 3 at 1 -> B;  5 (0,0.5): 0 at 0.5 -> A.
POINTS = torch.tensor([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 6.0], [0.0, 0.5]])
IDS = torch.tensor([0, 0, 1, 1, 2, 2])
NEAREST_OTHER = torch.tensor([2, 2, 0, 2, 1, 0])


def test_similarity_label_noise_hand_case():
    noisy, flipped = similarity_label_noise(POINTS, IDS, 0.5, seed=3)
    assert flipped.sum() == 3
    assert torch.equal(noisy[flipped], NEAREST_OTHER[flipped]) and torch.equal(noisy[~flipped], IDS[~flipped])
    assert (noisy[flipped] != IDS[flipped]).all()
    again = similarity_label_noise(POINTS, IDS, 0.5, seed=3)
    assert torch.equal(again[0], noisy) and torch.equal(again[1], flipped)
    assert len({tuple(similarity_label_noise(POINTS, IDS, 0.5, seed=s)[1].tolist()) for s in range(8)}) > 1
    everything, all_flipped = similarity_label_noise(POINTS, IDS, 0.95, seed=0)  # round(5.7) = 6
    assert all_flipped.all() and torch.equal(everything, NEAREST_OTHER)
    clean, none = similarity_label_noise(POINTS, IDS, 0.0, seed=0)
    assert torch.equal(clean, IDS) and not none.any()


def test_similarity_label_noise_cosine():
    # Image 0 (1,0) of id 0: by Euclidean distance image 2 (0.5,0.5) of id 2 is nearest (0.71 vs 9.06);
    # by angle image 1 (10,1) of id 1 is (5.7 degrees vs 45).
    points, ids = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.5, 0.5]]), torch.tensor([0, 1, 2])
    assert similarity_label_noise(points, ids, 0.9, seed=0)[0][0] == 2
    assert similarity_label_noise(points, ids, 0.9, seed=0, metric="cosine")[0][0] == 1


def test_similarity_label_noise_against_slow_reference():
    gen = torch.Generator().manual_seed(0)
    features, ids = torch.randn(300, 16, generator=gen), torch.randint(0, 12, (300,), generator=gen)
    for metric in ("euclidean", "cosine"):
        noisy, flipped = similarity_label_noise(features, ids, 0.2, seed=1, metric=metric)
        assert flipped.sum() == 60
        f = features.double().numpy()
        for i in range(300):
            if not flipped[i]:
                assert noisy[i] == ids[i]
                continue
            best, label = math.inf, None
            for j in range(300):
                if ids[j] == ids[i]:
                    continue
                d = np.linalg.norm(f[i] - f[j]) if metric == "euclidean" else \
                    1 - f[i] @ f[j] / (np.linalg.norm(f[i]) * np.linalg.norm(f[j]))
                if d < best:
                    best, label = d, int(ids[j])
            assert int(noisy[i]) == label


def test_similarity_label_noise_refuses():
    with pytest.raises(ConfigError, match="label_noise"):
        similarity_label_noise(POINTS, IDS, 1.0, seed=0)
    with pytest.raises(ConfigError, match="noise_metric"):
        similarity_label_noise(POINTS, IDS, 0.1, seed=0, metric="manhattan")
    with pytest.raises(ValueError, match="two identities"):
        similarity_label_noise(POINTS, torch.zeros(6, dtype=torch.long), 0.5, seed=0)


# ---------------------------------------------------------------------------------------------
# Identity classifier and schedule


@pytest.mark.parametrize("backbone,dim", [("small_cnn", 32), ("resnet18", 512), ("resnet50", 2048)])
def test_reid_model_shapes(backbone, dim):
    torch.manual_seed(0)
    model = build_reid_model(backbone, num_identities=7).eval()
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        assert model.features(x).shape == (2, dim) and model(x).shape == (2, 7)
    assert model.fc.in_features == dim and model.fc.out_features == 7
    if backbone != "small_cnn":
        assert isinstance(model.backbone.layer4[-1], torch.nn.Module)  # the unit SE-SNN makes stochastic


def test_extract_features_in_eval_mode_and_batch_free():
    torch.manual_seed(0)
    model = build_reid_model("resnet18", num_identities=3).train()
    images = torch.randint(0, 256, (5, 3, 32, 16), dtype=torch.uint8)
    one_by_one = extract_features(model, images, batch_size=1)
    assert one_by_one.shape == (5, 512) and model.training  # the mode is restored
    # Batch norm on running statistics: the same features whatever the batches (train mode would differ).
    torch.testing.assert_close(extract_features(model, images, batch_size=4), one_by_one)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().features(images.float() / 255), one_by_one)


def test_reid_model_weights_from_file(tmp_path):
    import torchvision
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)  # a 1000-way fc, as torchvision's ImageNet file
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_reid_model("resnet18", num_identities=5, weights=str(path))
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name
    assert model.fc.out_features == 5
    with pytest.raises(ConfigError, match="weights=.*no such file"):
        build_reid_model("resnet18", 5, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="does not fit backbone='small_cnn'"):
        build_reid_model("small_cnn", 5, weights=str(path))


def test_reid_config():
    cfg = ReidConfig()  # App. B.1: 60k iterations at 3.5e-4, then 20k at 5e-4, batch 32, Adam
    stages = (cfg.stage1_iterations, cfg.stage1_lr, cfg.stage2_iterations, cfg.stage2_lr)
    assert stages == (60_000, 3.5e-4, 20_000, 5e-4)
    assert (cfg.batch_size, cfg.optimizer, cfg.backbone, cfg.noise_metric) == (32, "adam", "resnet50", "euclidean")
    for field, value in (("backbone", "resnet51"), ("label_noise", 1.0), ("stage1_lr", 0.0), ("distance", "l1"),
                         ("ap_rule", "voc"), ("batch_size", 0), ("weights", 3)):
        with pytest.raises(ConfigError, match=field):
            ReidConfig(**{field: value})
