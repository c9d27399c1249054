"""`fedseqrec train` and `fedseqrec evaluate` end to end on tiny shop data."""

import json

import pytest
import torch

TINY = ["--shop-users", "120", "--shop-items", "60", "--shop-categories", "5"]
FAST = ["--hidden", "16", "--layers", "1", "--inner", "32", "--max-len", "10", "--epochs", "3", "--batch-size", "32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from fedseqrec.cli import main

    out = tmp_path_factory.mktemp("run") / "sasrec"
    assert main(["train", *TINY, *FAST, "--model", "sasrec", "--out", str(out)]) == 0
    return out


def test_train_writes_results_checkpoint_and_epoch_log(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    for part in ("test", "valid"):
        assert {"NDCG@10", "HR@10", "MRR@10"} <= set(metrics[part])
        assert 0.0 <= metrics[part]["NDCG@10"] <= metrics[part]["HR@10"] <= 1.0
    assert metrics["params"] > 0 and metrics["train_seconds"] > 0
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and all("valid" in r for r in lines)
    state = torch.load(trained / "model.pt", weights_only=True)  # weights only: a plain state dict
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert json.loads((trained / "model.json").read_text())["model"] == "sasrec"
    assert json.loads((trained / "config.json").read_text())["model"]["max_len"] == 10


def test_evaluate_reproduces_the_saved_test_metrics(cli, trained):
    result = cli("evaluate", *TINY, "--checkpoint", trained, "--json")
    assert result.code == 0, result.err
    saved = json.loads((trained / "metrics.json").read_text())
    assert json.loads(result.out)["test"]["NDCG@10"] == pytest.approx(saved["test"]["NDCG@10"])


def test_evaluate_without_data_uses_the_checkpoints_data_and_prints_a_table(cli, trained):
    result = cli("evaluate", "--checkpoint", trained)  # the data recorded in config.json: the same tiny shop
    assert result.code == 0, result.err
    saved = json.loads((trained / "metrics.json").read_text())
    test_row = next(line for line in result.out.splitlines() if line.startswith("| test |"))
    assert f"{saved['test']['NDCG@10']:.4f}" in test_row and "| split | NDCG@10 |" in result.out


def test_evaluate_measures_under_the_runs_own_protocol_unless_told(cli, tmp_path):
    out = tmp_path / "removed"
    train = cli("train", *TINY, "--model", "cooc", "--protocol", "full-history-removed", "--out", out)
    assert train.code == 0, train.err
    saved = json.loads((out / "metrics.json").read_text())["test"]["NDCG@10"]
    again = json.loads(cli("evaluate", "--checkpoint", out, "--json").out)
    assert again["protocol"] == "full-history-removed" and again["test"]["NDCG@10"] == pytest.approx(saved)
    told = json.loads(cli("evaluate", "--checkpoint", out, "--protocol", "full", "--json").out)
    assert told["protocol"] == "full" and told["test"]["NDCG@10"] != pytest.approx(saved)


def test_evaluate_explains_a_missing_checkpoint_folder(cli, tmp_path):
    result = cli("evaluate", "--checkpoint", tmp_path / "nowhere")
    assert result.code == 2 and "no such folder" in result.err and "FileNotFoundError" not in result.err


def test_checkpoint_for_another_vocabulary_is_refused(cli, trained):
    result = cli("evaluate", "--shop-users", "120", "--shop-items", "70", "--checkpoint", trained)
    assert result.code == 2 and "another item vocabulary" in result.err


def test_checkpoint_of_another_model_is_refused(cli, trained, tmp_path):
    import shutil

    other = tmp_path / "relabelled"
    shutil.copytree(trained, other)
    info = json.loads((other / "model.json").read_text())
    info["model"] = "gru4rec"
    (other / "model.json").write_text(json.dumps(info))
    result = cli("evaluate", *TINY, "--checkpoint", other)
    assert result.code == 2 and "do not fit a gru4rec model" in result.err


def test_pop_baseline_through_train(cli, tmp_path):
    result = cli("train", *TINY, "--model", "pop", "--out", tmp_path / "pop")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "pop" / "metrics.json").read_text())["test"]["HR@10"] > 0


def test_train_help_lists_hyper_parameters_with_defaults(cli):
    out = " ".join(cli("train", "--help").out.split())
    for text in (
        "--hidden HIDDEN embedding and hidden size (default: 64)",
        "--lr LR AdamW learning rate (default: 0.002)",
        "--max-len MAX_LEN",
        "(default: 50)",
        "--dropout",
        "--patience",
        "--epochs",
    ):
        assert text in out, text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "transformer"], ["--model", "is not one of", "sasrec"]),
        (["--hidden", "0"], ["--hidden must be a positive integer"]),
        (["--lr", "0"], ["--lr must be a positive number"]),
        (["--dropout", "1.5"], ["--dropout must be in [0, 1)"]),
        (["--max-len", "-3"], ["--max-len must be a positive integer"]),
        (["--epochs", "0"], ["--epochs must be a positive integer"]),
        (["--label-smoothing", "1"], ["--label-smoothing must be in [0, 1)"]),
        (["--low-pass", "0.5", "--low-pass-filter", "fourier"], ["reads later positions", "--window prefixes"]),
        (["--model", "bert4rec", "--window", "prefixes"], ["--window prefixes trains next-item models"]),
        (["--popularity-prior", "much"], ["--popularity-prior", "a number (β) or auto", "much"]),
        (["--model", "pop", "--popularity-prior", "0.5"], ["--popularity-prior 0.5", "no item scorer"]),
    ],
)
def test_bad_hyper_parameters(cli, tmp_path, args, words):
    out = tmp_path / "run"
    result = cli("train", *TINY, *args, "--out", out)
    assert result.code == 2 and "Traceback" not in result.err
    for word in words:
        assert word in result.err
    assert not out.exists()


def test_train_shows_progress_per_epoch_and_why_it_stopped(cli, tmp_path):
    out = tmp_path / "timed"
    result = cli("train", *TINY, *FAST, "--patience", "500", "--out", out)
    assert result.code == 0, result.err
    epochs = [line for line in result.err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and "loss" in epochs[0] and "valid NDCG@10" in epochs[-1]  # plain lines in a log
    # One epoch of 3,000 users in batches of 2 (1,500 steps) takes far longer than the limit: it stops inside it.
    result = cli(
        "train",
        "--shop-users",
        "3000",
        *FAST[:-4],
        "--batch-size",
        "2",
        "--epochs",
        "5",
        "--max-seconds",
        "1",
        "--out",
        tmp_path / "limited",
    )
    assert result.code == 0, result.err
    assert "stopped: --max-seconds 1 reached in epoch 1" in result.out
    metrics = json.loads((tmp_path / "limited" / "metrics.json").read_text())
    # Checked after every step: well inside the epoch (1,500 steps), with slack for a loaded machine.
    assert metrics["epochs_run"] == 1 and 1 <= metrics["train_seconds"] < 3


def test_train_refuses_an_out_that_is_a_file(cli, tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    result = cli("train", *TINY, *FAST, "--out", existing)
    assert result.code == 2 and "is a file" in result.err and "internal error" not in result.err
    assert existing.read_text() == "keep me"


def test_a_train_folder_is_not_taken_for_a_federated_run(cli, trained):
    from helpers import TINY_FLAGS

    out = cli("simulate", *TINY_FLAGS, "--out", trained)
    resume = cli("simulate", "--resume", trained)
    for result in (out, resume):
        assert result.code == 2 and "holds the results of `fedseqrec train`" in result.err


def test_checkpoint_of_an_earlier_model_revision_is_refused(cli, trained, tmp_path):
    """A model whose weights came to mean something else (bert4rec's positions, revision 2) refuses checkpoints
    of the earlier revision, which carry no revision field, instead of serving wrong scores with them."""
    import shutil

    assert json.loads((trained / "model.json").read_text())["revision"] == 1
    older = tmp_path / "older"
    shutil.copytree(trained, older)
    info = json.loads((older / "model.json").read_text())
    info.pop("revision")
    info["model"] = "bert4rec"  # bert4rec is at revision 2: a checkpoint without the field is revision 1
    (older / "model.json").write_text(json.dumps(info))
    result = cli("evaluate", *TINY, "--checkpoint", older)
    assert result.code == 2 and "revision 1" in result.err and "train it again" in result.err


def test_linear_schedule_rises_then_falls_to_zero_at_the_last_step():
    from fedseqrec.models.optim import LinearSchedule, adamw

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = adamw([weight], lr=0.1, weight_decay=0.0)
    schedule = LinearSchedule(optimizer, warmup=2, total=8)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(8):
        schedule(0.0)
        rates.append(optimizer.param_groups[0]["lr"])
    # step t's rate: min(1, (t+1)/2) · (8 - t)/8, so t = 0..7 and then 0 after the last step
    expected = [0.1 * min(1, (t + 1) / 2) * (8 - t) / 8 for t in range(8)] + [0.0]
    assert rates == pytest.approx(expected) and rates[1] == pytest.approx(0.1 * 7 / 8)
    constant = LinearSchedule(adamw([weight], lr=0.1, weight_decay=0.0), warmup=4)
    assert [constant.share(t) for t in (0, 3, 4, 1000)] == pytest.approx([0.25, 1.0, 1.0, 1.0])


def test_train_with_a_linear_schedule_records_it(tmp_path):
    from fedseqrec.cli import main

    out = tmp_path / "linear"
    assert main(["train", *TINY, *FAST, "--model", "gru4rec", "--lr-schedule", "linear", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["lr_schedule"] == "linear"


def test_a_popularity_prior_adds_beta_log_counts_to_every_items_score(trained):
    from fedseqrec.centralized.popularity_prior import log_counts, with_prior
    from fedseqrec.data.dataset import DataConfig, load_dataset
    from fedseqrec.data.splits import training_items
    from fedseqrec.models.batching import evaluation_batches
    from fedseqrec.models.checkpoint import load_checkpoint

    ds = load_dataset(DataConfig(shop=_shop()))
    _, model = load_checkpoint(trained, ds.sequences)
    model.eval()
    items = torch.as_tensor(training_items(ds.sequences, ds.split))
    counts = torch.bincount(items, minlength=ds.sequences.n_items + 1).float()
    counts[0] = 0
    assert torch.allclose(log_counts(ds), torch.log1p(counts)) and counts.sum() > 0
    batch = next(iter(evaluation_batches(ds.sequences, ds.split, "valid", None, 10, 64))).batch
    with torch.no_grad():
        before = model.full_sort_predict(batch)
        with_prior(model, model.scorer.bias.detach().clone(), log_counts(ds), 0.5)
        after = model.full_sort_predict(batch)
    assert torch.allclose((after - before)[:, 1:], 0.5 * torch.log1p(counts)[1:].expand_as(after[:, 1:]), atol=1e-5)


def test_an_automatic_prior_keeps_the_beta_validation_prefers_and_saves_it(cli, tmp_path):
    out = tmp_path / "prior"
    result = cli("train", *TINY, *FAST, "--model", "sasrec", "--popularity-prior", "auto", "--out", out)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    prior = metrics["popularity_prior"]
    scores = {float(b): s for b, s in prior["valid_scores"].items()}
    assert set(scores) == {0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0} and scores[prior["beta"]] == max(scores.values())
    assert metrics["valid"]["NDCG@10"] == pytest.approx(scores[prior["beta"]], abs=1e-6)
    assert f"popularity prior: β = {prior['beta']:g}" in result.out
    # the saved model is the one with the prior: evaluate finds the same figures from the folder alone
    again = json.loads(cli("evaluate", "--checkpoint", out, "--json").out)
    assert again["valid"]["NDCG@10"] == pytest.approx(metrics["valid"]["NDCG@10"], abs=1e-6)
    assert again["test"]["NDCG@10"] == pytest.approx(metrics["test"]["NDCG@10"], abs=1e-6)


def _shop():
    from fedseqrec.data.shop import ShopConfig

    return ShopConfig(users=120, items=60, categories=5)
