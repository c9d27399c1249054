"""``--task search``: query words, the split over searches, the shop's planted searches, the text-match baseline and
the query-aware model's inputs, by hand."""

import numpy as np
import pandas as pd
import pytest
import torch

from fedseqrec.data import DataConfig, load_dataset
from fedseqrec.data.cleaning import clean
from fedseqrec.data.interactions import Interactions, make_table
from fedseqrec.data.sequences import build_sequences
from fedseqrec.data.shop import CATEGORIES, PRICE_WORDS, ShopConfig, generate_shop
from fedseqrec.data.splits import search_split
from fedseqrec.data.text import words
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.models.base import SeqBatch
from fedseqrec.models.batching import TrainingWindows, evaluation_batches
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.registry import build_model, model_config_for
from fedseqrec.models.text_match import TextMatch


def searched_log(rows) -> Interactions:
    """rows: (user, item, time, query or None); items have a text feature."""
    users, items, times, queries = zip(*rows, strict=True)
    table = make_table(
        pd.Series(users, dtype=object),
        pd.Series(items, dtype=object),
        np.array(times, float),
        event=pd.Series(["search" if q else "view" for q in queries], dtype=object),
        query=pd.Series(queries, dtype=object),
    )
    texts = {"red": "Red Shoe", "blue": "blue shoe", "cup": "Red cup", "pan": "frying pan"}
    features = pd.DataFrame({"title": list(texts.values())}, index=list(texts))
    return Interactions(table, item_features=features, source="hand")


def hand_data():
    log = searched_log(
        [
            ("a", "cup", 1, "red shoe"),  # opens the history: no target
            ("a", "pan", 2, None),
            ("a", "blue", 3, "Blue SHOE"),  # validation target
            ("a", "pan", 4, None),
            ("a", "red", 5, "red-shoe"),  # test target
            ("a", "cup", 6, None),  # after the test target: never used
            ("b", "pan", 1, None),
            ("b", "red", 2, "shoe"),  # b's only search: test target, no validation
            ("c", "cup", 1, None),
            ("c", "pan", 2, None),  # c never searches: trains on everything
        ]
    )
    events, _ = clean(log)
    return build_sequences(events, item_features=log.item_features)


def test_words_lower_case_and_split_at_non_alphanumerics():
    assert words("Red-Shoe  42,big") == ["red", "shoe", "42", "big"]


def test_token_tables_share_ids_between_queries_and_item_texts():
    seq = hand_data()
    tables = seq.tokens
    assert tables.vocabulary.tolist() == ["[PAD]", "blue", "cup", "frying", "pan", "red", "shoe"]
    item = {str(t): i for i, t in enumerate(seq.vocab.items)}
    assert tables.items[item["red"]][:3].tolist() == [5, 6, 0]
    assert tables.items[item["pan"]][:3].tolist() == [3, 4, 0]
    query = {str(q): i for i, q in enumerate(seq.vocab.queries)}
    assert tables.queries[query["Blue SHOE"]][:3].tolist() == [1, 6, 0]
    assert tables.queries[0].tolist() == [0] * tables.queries.shape[1]  # no query
    assert tables.encode("red unknown shoe")[:3].tolist() == [5, 6, 0]


def test_search_split_positions_by_hand():
    split = search_split(hand_data())  # users a, b, c -> ids 1, 2, 3
    assert split.test_pos.tolist() == [-1, 4, 1, -1]
    assert split.valid_pos.tolist() == [-1, 2, -1, -1]
    assert split.train_end.tolist() == [0, 2, 1, 2]


def test_evaluation_batches_carry_the_targets_query_at_the_last_position():
    seq = hand_data()
    split = search_split(seq)
    chunk = next(evaluation_batches(seq, split, "test", max_len=4))
    assert chunk.users.tolist() == [2, 1]  # shortest history first
    assert chunk.batch.lengths.tolist() == [1, 4]
    shoe, red = (int(np.flatnonzero(seq.tokens.vocabulary == w)[0]) for w in ("shoe", "red"))
    asked = chunk.batch.target_queries
    assert asked[1, 3, :2].tolist() == [red, shoe] and asked[0, 0, :1].tolist() == [shoe]
    assert int(asked.count_nonzero()) == 3  # nothing anywhere else


def test_training_windows_shift_each_events_query_onto_the_position_before_it():
    seq = hand_data()
    split = search_split(seq)
    windows = TrainingWindows(seq, split, np.array([1]), max_len=5)
    batch = windows.batch_of([torch.stack(c) for c in zip(windows[0], strict=True)])
    model = build_model("sasrec", model_config_for(seq, ModelConfig(hidden=8, heads=1, layers=1, max_len=5)))
    view = model.training_view(batch)
    # a's training window: cup (query "red shoe"), pan; the target pan after cup had no query
    assert view.targets[0, :1].tolist() == [int(seq.items[1])]
    assert int(view.target_queries[0, 0].count_nonzero()) == 0


def test_text_match_counts_distinct_query_words_then_popularity():
    seq = hand_data()
    item = {str(t): i for i, t in enumerate(seq.vocab.items)}
    training = np.array([item["pan"], item["pan"], item["cup"]])
    model = TextMatch(seq.tokens.items, training)
    query = torch.zeros(1, 2, 8, dtype=torch.long)
    query[0, 1, :3] = torch.from_numpy(seq.tokens.encode("red red shoe")[:3])
    batch = SeqBatch(
        torch.ones(1, 2, dtype=torch.long),
        torch.zeros(1, 2, dtype=torch.long),
        torch.zeros(1, 2, dtype=torch.long),
        torch.tensor([2]),
        target_queries=query,
    )
    scores = model.full_sort_predict(batch)[0]
    # red shoe: 2 words; cup (red) and blue (shoe): 1 each, cup ahead by popularity; pan: popularity only
    assert scores[item["red"]] == pytest.approx(2.0)
    assert scores[item["cup"]] == pytest.approx(1 + 1 / 3)
    assert scores[item["blue"]] == pytest.approx(1.0)
    assert scores[item["pan"]] == pytest.approx(2 / 3)
    assert scores[0] == -np.inf


def test_task_search_refuses_data_without_queries(tmp_path, cli):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\na,x,1\na,y,2\na,z,3\n")
    with pytest.raises(UserError, match="no event carries a search query"):
        load_dataset(DataConfig(data=str(path), task="search"))
    with pytest.raises(UserError, match="its own split"):
        load_dataset(DataConfig(task="search", split="temporal"))
    result = cli("train", "--task", "search", "--data", path, "--out", tmp_path / "run")
    assert result.code == 2 and "no event carries a search query" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    result = cli("train", "--model", "query-sasrec", "--data", path, "--out", tmp_path / "run")
    assert result.code == 2 and "query-sasrec reads search queries" in result.err


def test_planted_searches_leave_every_other_draw_of_the_shop_log_alone():
    cfg = ShopConfig(users=300)
    plain, planted = generate_shop(cfg).events, generate_shop(cfg, searches=True).events
    assert len(plain) == len(planted)
    assert (plain["timestamp"].to_numpy() == planted["timestamp"].to_numpy()).all()
    same = (planted["event"] != "search").to_numpy()
    assert (plain["item"].to_numpy()[same] == planted["item"].to_numpy()[same]).all()
    assert (planted["event"] == "search").sum() > 2 * (plain["event"] == "search").sum()


def test_planted_search_signal_needs_both_the_query_and_the_history():
    """The oracle that reads the query's category and the history (the successor of the last item seen in that
    category) finds the searched item far more often than the best a query alone can do (the most popular item
    matching the query's category and price band)."""
    from fedseqrec.data.shop import _Catalogue

    cfg = ShopConfig(users=2000)
    log = generate_shop(cfg, searches=True)
    cat = _Catalogue(cfg, np.random.default_rng(cfg.seed))
    ev = log.events
    item = ev["item"].str[1:].astype(int).to_numpy()
    user = ev["user"].to_numpy()
    query = ev["query"].to_numpy()
    text_hits = oracle_hits = searches = 0
    last_in = {}
    band = {w: b for b, w in enumerate(PRICE_WORDS)}
    for u, i, q in zip(user, item, query, strict=True):
        if isinstance(q, str) and (u, None) in last_in:
            category, price = CATEGORIES.index(q.split()[0]), band[q.split()[1]]
            matching = np.flatnonzero((cat.category == category) & (cat.price_band == price))
            text_hits += int(matching[np.argmax(cat.popularity[matching])] == i)
            seen = last_in.get((u, category))
            oracle_hits += int(seen is not None and cat.successor[seen] == i)
            searches += 1
        last_in[(u, cat.category[i])] = i
        last_in[(u, None)] = i
    assert searches > 3000
    assert oracle_hits / searches > 0.6 > 0.3 > text_hits / searches


def test_text_match_beats_popularity_on_shop_searches():
    ds = load_dataset(DataConfig(task="search", shop=ShopConfig(users=400)))
    from fedseqrec.data.splits import training_items
    from fedseqrec.models.pop import Popularity

    seen = training_items(ds.sequences, ds.split)
    text = evaluate(TextMatch(ds.sequences.tokens.items, seen), ds.sequences, ds.split, "test")["NDCG@10"]
    pop = evaluate(Popularity(ds.sequences.n_items).fit(seen), ds.sequences, ds.split, "test")["NDCG@10"]
    assert text > 5 * pop


def search_run(**options):
    """The tiny federation of the other tests, on the planted searches, with the query-aware model."""
    from helpers import TINY

    return TINY.replace(task="search", model="query-sasrec", rounds=2, **options)


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
def test_search_task_trains_federated_plain_and_under_both_dp_mechanisms(tmp_path, options):
    import json

    from fedseqrec.simulation.engine import simulate

    cfg = search_run(**options)
    results, folder = simulate(cfg, out=tmp_path / "run")
    ds = load_dataset(cfg.data)
    assert ds.split.name == "search"
    assert results["rounds_run"] == 2 and 0.0 <= results["test"]["NDCG@10"] <= 1.0
    config = json.loads((folder.path / "config.json").read_text())
    assert config["run_config"]["task"] == "search"
    if options:
        report = json.loads((folder.path / "privacy_report.json").read_text())
        assert report["max_epsilon"] > 0 and len(report["history"]) == 2


@pytest.mark.slow
def test_query_aware_model_beats_the_query_alone_and_the_history_alone(tmp_path):
    """On the planted searches, reading both the query and the history ranks the found item higher than text-match
    (the query alone) and than SASRec (the history alone)."""
    from fedseqrec.centralized.config import TrainConfig
    from fedseqrec.centralized.training import train_centralized

    data = DataConfig(task="search", shop=ShopConfig(users=1500))
    found = {}
    for name in ("text-match", "sasrec", "query-sasrec"):
        train = TrainConfig(epochs=15, patience=15, threads=1)
        found[name] = train_centralized(data, ModelConfig(name=name), train, tmp_path / name)["test"]["NDCG@10"]
    assert found["query-sasrec"] > 1.15 * found["text-match"] and found["query-sasrec"] > 1.3 * found["sasrec"], found


def test_recommend_ranks_a_searchs_results_with_the_query(tmp_path, cli):
    """A trained query-aware model answers `recommend --query`; a query-agnostic one refuses a query."""
    import json

    from fedseqrec.centralized.config import TrainConfig
    from fedseqrec.centralized.training import train_centralized

    data = DataConfig(task="search", shop=ShopConfig(users=200, items=60, categories=4))
    small = {"hidden": 16, "layers": 1, "heads": 1, "inner": 32, "max_len": 10}
    for name in ("query-sasrec", "sasrec"):
        train_centralized(data, ModelConfig(name=name, **small), TrainConfig(epochs=1), tmp_path / name)
    result = cli("recommend", tmp_path / "query-sasrec", "--user", "u000003", "--query", "audio cheap", "--k", "5")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["query"] == "audio cheap" and len(answer["items"]) == 5
    features = load_dataset(data).sequences.item_features
    texts = features.assign(id=features.index).set_index(load_dataset(data).sequences.vocab.items[features.index])
    top = texts.loc[answer["items"][0]["item"]]
    assert top["category"] == "audio" or top["price_band"] == "cheap"  # the words count before learning
    result = cli("recommend", tmp_path / "sasrec", "--user", "u000003", "--query", "audio cheap")
    assert result.code == 2 and "does not read search queries" in result.err
