"""``--task ctr``: ad labels in logs, the split over slates, click and conversion metrics as mergeable sums (by
hand), the shop's planted ad signal, and the models centrally, federated and under DP."""

import json

import numpy as np
import pytest
from reference_metrics import log_loss

from fedseqrec.data import DataConfig, ShopConfig, load_dataset
from fedseqrec.data.shop import generate_shop, shop_with_truth
from fedseqrec.evaluation.ads import BINS, ad_result, ad_sums, calibration_groups
from fedseqrec.evaluation.binary import auc
from fedseqrec.evaluation.metrics import MetricSums
from fedseqrec.models.batching import slate_batches

LOG = """user,item,timestamp,event,click,purchase
a,x,1,view,,
a,y,2,view,,
a,z,3,,0,0
a,x,3.1,,1,0
a,y,5,view,,
a,z,6,,1,1
a,w,6.1,,0,
b,x,1,view,,
b,y,2,,1,
"""


def ads_log(tmp_path, text=LOG):
    path = tmp_path / "ads.csv"
    path.write_text(text)
    return path


def test_labelled_rows_become_impressions_and_slates_split_by_hand(tmp_path):
    ds = load_dataset(DataConfig(data=str(ads_log(tmp_path)), task="ctr"))
    seq = ds.sequences
    names = [str(seq.vocab.events[e]) for e in seq.events[seq.offsets[1] : seq.offsets[2]]]
    assert names == ["view", "view", "impression", "ad-click", "view", "ad-conversion", "impression"]
    # a: slates at positions 2 (validation) and 5 (test); b: one slate at 1 (test)
    assert ds.split.valid_pos.tolist() == [-1, 2, -1] and ds.split.test_pos.tolist() == [-1, 5, 1]
    assert ds.split.train_end.tolist() == [0, 2, 1]
    slate = next(slate_batches(seq, ds.split, "test"))
    assert slate.users.tolist() == [2, 1] and slate.batch.lengths.tolist() == [1, 5]  # shortest history first
    item = {str(t): i for i, t in enumerate(seq.vocab.items)}
    assert slate.ads.tolist() == [[item["y"], 0], [item["z"], item["w"]]]
    assert slate.clicked.tolist() == [[True, False], [True, False]]
    assert slate.bought.tolist() == [[False, False], [True, False]]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a,z,9,,2,0", "line 11: column 'click': an ad label must be 0 or 1, got '2'"),
        ("a,z,9,,0,1", "line 11: a purchase of an ad that was not clicked"),
    ],
)
def test_bad_ad_labels_are_one_clear_line(tmp_path, cli, line, message):
    path = ads_log(tmp_path, LOG + line + "\n")
    result = cli("train", "--task", "ctr", "--model", "din-esmm", "--data", path, "--out", tmp_path / "run")
    assert result.code == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


def test_a_log_without_ad_labels_is_refused_for_ctr(tmp_path, cli):
    path = ads_log(tmp_path, "user,item,timestamp\na,x,1\na,y,2\na,z,3\n")
    result = cli("train", "--task", "ctr", "--model", "lr", "--data", path, "--out", tmp_path / "run")
    assert result.code == 2 and "no ad impression" in result.err


def test_ad_sums_give_exact_auc_gauc_and_log_loss_and_merge_across_clients():
    rng = np.random.default_rng(0)
    n = 400
    p_click = (rng.permutation(BINS)[:n] + 0.5) / BINS  # one impression per bin: no ties
    clicked = rng.random(n) < p_click
    p_buy = (rng.permutation(BINS)[:n] + 0.5) / BINS  # distinct bins too
    bought = clicked & (rng.random(n) < 0.3)
    slates = np.repeat(np.arange(80), 5)
    half = n // 2
    merged = MetricSums(ad_sums(p_click[:half], p_buy[:half], clicked[:half], bought[:half], slates[:half]), half)
    merged = merged.merge(
        MetricSums(ad_sums(p_click[half:], p_buy[half:], clicked[half:], bought[half:], slates[half:]), n - half)
    )
    found = merged.result()
    assert found["CTR-AUC"] == pytest.approx(auc(p_click, clicked), abs=1e-12)
    assert found["CVR-AUC"] == pytest.approx(auc(p_buy, bought), abs=1e-12)
    assert found["CTR-LogLoss"] == pytest.approx(log_loss(p_click, clicked), rel=1e-9)
    both = [s for s in range(80) if 0 < clicked[slates == s].sum() < 5]
    gauc = sum(auc(p_click[slates == s], clicked[slates == s]) for s in both) / len(both)  # equal slates
    assert found["CTR-GAUC"] == pytest.approx(gauc, rel=1e-9)
    assert found["AUC"] == found["CTR-AUC"]
    assert found["CTR-observed"] == pytest.approx(clicked.mean())


def test_histogram_auc_counts_a_shared_bin_as_a_tie():
    # positives at 0.9 and 0.2, negatives at 0.9 and 0.1: pairs (0.9,0.9) tie, (0.9,0.1) win, (0.2,0.9) lose,
    # (0.2,0.1) win -> (0.5 + 1 + 0 + 1) / 4
    p = np.array([0.9, 0.2, 0.9, 0.1])
    y = np.array([True, True, False, False])
    result = ad_result(ad_sums(p, p, y, y, np.arange(4)), 4)
    assert result["CTR-AUC"] == pytest.approx(0.625) == auc(p, y)


def test_calibration_groups_compare_mean_prediction_and_observed_rate():
    pos, neg, predicted = np.zeros(BINS), np.zeros(BINS), np.zeros(BINS)
    pos[100], neg[100], predicted[100] = 1, 9, 10 * 0.0100  # ten impressions predicted 1 %, one positive
    pos[5000], neg[5000], predicted[5000] = 5, 5, 10 * 0.5000
    groups = calibration_groups(pos, neg, predicted, groups=2)
    assert groups == [
        {"impressions": 10, "predicted": pytest.approx(0.01), "observed": 0.1},
        {"impressions": 10, "predicted": pytest.approx(0.5), "observed": 0.5},
    ]


def test_ad_slates_leave_the_behaviour_log_alone_and_purchases_are_rare():
    cfg = ShopConfig(users=500)
    plain = generate_shop(cfg).events
    shown, slates = shop_with_truth(cfg, ads=True)
    behaviour = shown.events[~shown.events["event"].isin(["impression", "ad-click", "ad-conversion"])]
    assert behaviour.reset_index(drop=True).equals(plain.reset_index(drop=True))
    clicks = (slates.event != "impression").mean()
    conversions = (slates.event == "ad-conversion").sum() / (slates.event != "impression").sum()
    assert 0.1 < clicks < 0.4 and 0.01 < conversions < 0.08  # purchases: a few per cent of clicks


@pytest.mark.slow
def test_the_sequence_aware_oracle_beats_the_non_sequential_baseline(tmp_path):
    """The probabilities the generator drew clicks with (which read the recent history) rank the test slates'
    clicks better than the logistic-regression baseline trained on the whole history as a bag."""
    from fedseqrec.centralized.config import TrainConfig
    from fedseqrec.centralized.training import train_centralized
    from fedseqrec.models.config import ModelConfig

    cfg = ShopConfig(users=2000)
    data = DataConfig(task="ctr", shop=cfg)
    baseline = train_centralized(
        data, ModelConfig(name="lr"), TrainConfig(epochs=8, lr=0.01, weight_decay=0.0), tmp_path / "lr"
    )["test"]["CTR-AUC"]
    log, slates = shop_with_truth(cfg, ads=True)
    truth = log.events.iloc[-len(slates.item) :].assign(p=slates.p_click)  # impressions come last, in slate order
    ds = load_dataset(data)
    seq = ds.sequences
    tested = []
    for chunk in slate_batches(seq, ds.split, "test"):
        for row, user in enumerate(chunk.users):
            first = seq.offsets[user] + int(ds.split.test_pos[user])
            times = seq.timestamps[first : first + int((chunk.ads[row] > 0).sum())]
            tested += [(str(seq.vocab.users[user]), t, c) for t, c in zip(times, chunk.clicked[row], strict=False)]
    index = truth.set_index(["user", "timestamp"])["p"]
    p = np.array([index[(u, t)] for u, t, _ in tested])
    clicked = np.array([c for _, _, c in tested])
    assert auc(p, clicked) > baseline + 0.05, (auc(p, clicked), baseline)


@pytest.mark.slow
def test_din_esmm_beats_the_logistic_baseline_on_click_auc(tmp_path):
    from fedseqrec.centralized.config import TrainConfig
    from fedseqrec.centralized.training import train_centralized
    from fedseqrec.models.config import ModelConfig

    data = DataConfig(task="ctr", shop=ShopConfig(users=2000))
    found = {}
    for name, fit in (("lr", {"lr": 0.01, "weight_decay": 0.0, "epochs": 8}), ("din-esmm", {"epochs": 4})):
        result = train_centralized(data, ModelConfig(name=name), TrainConfig(patience=8, **fit), tmp_path / name)
        found[name] = result["test"]["CTR-AUC"]
        fitted = result["calibration"]  # Platt scaling on the validation slates, scales positive
        assert fitted["click"][0] > 0 and fitted["conversion"][0] > 0 and fitted["impressions"] > 1000
    assert found["din-esmm"] > found["lr"] + 0.02, found


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mechanism": "dp-sgd", "noise_multiplier": 1.0},
        {"mechanism": "user-level", "users_per_round": 40, "noise_multiplier": 1.0},
    ],
    ids=["fedavg", "dp-sgd", "user-dp"],
)
def test_ctr_task_trains_federated_plain_and_under_both_dp_mechanisms(tmp_path, options):
    from helpers import TINY

    from fedseqrec.simulation.engine import simulate

    cfg = TINY.replace(task="ctr", model="din-esmm", rounds=2, **options)
    results, folder = simulate(cfg, out=tmp_path / "run")
    assert results["rounds_run"] == 2 and 0.0 <= results["test"]["CTR-AUC"] <= 1.0
    assert results["test"]["CTR-LogLoss"] > 0.0 and "NDCG@10" not in results["test"]
    assert json.loads((folder.path / "config.json").read_text())["run_config"]["task"] == "ctr"
    if options:
        report = json.loads((folder.path / "privacy_report.json").read_text())
        assert report["max_epsilon"] > 0 and len(report["history"]) == 2


def test_an_ad_model_scores_ads_for_a_user_from_the_command_line(tmp_path, cli):
    from fedseqrec.centralized.config import TrainConfig
    from fedseqrec.centralized.training import train_centralized
    from fedseqrec.models.config import ModelConfig

    data = DataConfig(task="ctr", shop=ShopConfig(users=150, items=60, categories=4))
    train_centralized(data, ModelConfig(name="din-esmm", hidden=16), TrainConfig(epochs=1), tmp_path / "din")
    result = cli("recommend", tmp_path / "din", "--user", "u000003", "--ads", "i000001", "i000002", "nope")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert [a["item"] for a in answer["ads"]] == ["i000001", "i000002"] and answer["unknown_ads"] == ["nope"]
    assert all(0 < a["p_purchase"] < a["p_click"] < 1 for a in answer["ads"])  # pCTCVR = pCTR · pCVR
    result = cli("recommend", tmp_path / "din", "--user", "u000003")
    assert result.code == 2 and "not the next item of a ranking" in result.err


def test_the_http_service_scores_ads_and_ranks_a_searchs_results(tmp_path):
    """``POST /ads`` for an ad model; ``POST /recommend`` with a query for the query-aware model."""
    from test_serving import Server

    from fedseqrec.centralized.config import TrainConfig
    from fedseqrec.centralized.training import train_centralized
    from fedseqrec.models.config import ModelConfig

    shop = ShopConfig(users=150, items=60, categories=4)
    train_centralized(DataConfig(task="ctr", shop=shop), ModelConfig(name="lr"), TrainConfig(epochs=1), tmp_path / "lr")
    small = ModelConfig(name="query-sasrec", hidden=16, layers=1, heads=1, inner=32)
    train_centralized(DataConfig(task="search", shop=shop), small, TrainConfig(epochs=1), tmp_path / "search")
    server = Server(tmp_path / "lr")
    try:
        body = json.dumps({"history": ["i000001", "i000002"], "ads": ["i000003", "i000004"]}).encode()
        status, answer = server.request("POST", "/ads", body)
        assert status == 200 and [a["item"] for a in answer["ads"]] == ["i000003", "i000004"]
        assert server.post({"history": ["i000001"], "k": 3})[0] == 422  # an ad model ranks nothing
    finally:
        assert server.stop() == 143
    server = Server(tmp_path / "search")
    try:
        status, answer = server.post({"history": ["i000001", "i000002"], "query": "audio cheap", "k": 3})
        assert status == 200 and len(answer["items"]) == 3
        status, answer = server.post({"histories": [["i000001"], ["i000002"]], "queries": ["audio", None], "k": 2})
        assert status == 200 and len(answer["results"]) == 2
    finally:
        assert server.stop() == 143


def test_the_audit_is_refused_for_ctr():
    from fedseqrec.errors import UserError

    with pytest.raises(UserError, match="--task ctr has none"):
        load_dataset(DataConfig(task="ctr", audit_canaries=10, audit_seed=1))


@pytest.mark.parametrize("name", ["din-esmm", "lr"])
def test_ad_models_train_under_opacus_with_a_per_user_gradient_for_every_parameter(name):
    """DP-SGD's per-sample hooks (the ad models' mode) give every trainable parameter a gradient per user window,
    and three noisy steps move every parameter."""
    import torch
    from torch.utils.data import DataLoader

    from fedseqrec.models.batching import TrainingWindows
    from fedseqrec.models.config import ModelConfig
    from fedseqrec.models.registry import build_model, model_config_for
    from fedseqrec.privacy.dpsgd import grad_sample_mode_for, make_private

    torch.manual_seed(0)
    ds = load_dataset(DataConfig(task="ctr", shop=ShopConfig(users=120, items=60, categories=4)))
    cfg = model_config_for(ds.sequences, ModelConfig(name=name, hidden=16, max_len=12, dropout=0.0))
    model = build_model(name, cfg, ds.sequences).train()
    assert grad_sample_mode_for(model, "auto") == "hooks"
    windows = TrainingWindows(ds.sequences, ds.split, max_len=cfg.max_len)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    made = make_private(
        model,
        optimizer,
        DataLoader(windows, batch_size=16),
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        mode="hooks",
        label_smoothing=0.0,
    )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in trainable}
    steps = 0
    for tensors in made.loader:
        batch = windows.batch_of(tensors)
        if batch.items.shape[0] == 0:
            continue
        made.optimizer.zero_grad()
        model.calculate_loss(batch, made.criterion).backward()
        for n, p in trainable:
            assert p.grad_sample is not None and p.grad_sample.shape[0] == batch.items.shape[0], n
        made.optimizer.step()
        steps += 1
        if steps == 3:
            break
    made.hooks.cleanup()
    assert steps == 3 and all(not torch.equal(before[n], p.detach()) for n, p in trainable)
