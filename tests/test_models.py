"""Every ranking model: shapes, causality, training under Opacus (hooks and ghost), and beating popularity on shop
(the ad models of --task ctr: tests/test_ads.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from fedseqrec.data import DataConfig, ShopConfig, load_dataset
from fedseqrec.errors import UserError
from fedseqrec.models import base
from fedseqrec.models.base import SeqBatch, SequentialRecommender
from fedseqrec.models.batching import TrainingWindows, evaluation_batches, training_examples
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.fused_ce import fused_cross_entropy_sum
from fedseqrec.models.registry import MODELS, build_model, model_config_for
from fedseqrec.privacy.compat import dp_compatible
from fedseqrec.privacy.dpsgd import make_private

NAMES = sorted(set(MODELS) - {"din-esmm", "lr"})  # the ad models score shown ads (test_ads.py)


@pytest.fixture(scope="module")
def shop():
    return load_dataset(DataConfig(shop=ShopConfig(users=200, items=120, categories=8), seed=1))


def small_config(ds, **overrides) -> ModelConfig:
    values = {
        "n_items": ds.sequences.n_items,
        "n_events": len(ds.sequences.vocab.events) - 1,
        "n_query_tokens": ds.sequences.tokens.n_tokens,
        "hidden": 16,
        "layers": 1,
        "heads": 2,
        "inner": 32,
        "dropout": 0.1,
        "max_len": 12,
        **overrides,
    }
    return ModelConfig(**values)


def first_batch(ds, cfg, batch_size=8):
    windows = TrainingWindows(ds.sequences, ds.split, max_len=cfg.max_len)
    return windows, windows.batch_of(next(iter(DataLoader(windows, batch_size=batch_size))))


@pytest.mark.parametrize("name", NAMES)
def test_loss_and_full_sort_shapes(shop, name):
    cfg = small_config(shop)
    model = build_model(name, cfg)
    _, batch = first_batch(shop, cfg)
    loss = model.calculate_loss(batch)
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    scores = model.full_sort_predict(next(evaluation_batches(shop.sequences, shop.split, "test", max_len=12)).batch)
    assert scores.shape[1] == cfg.n_items + 1 and torch.isinf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize(("loss", "tied"), [("ce", False), ("sampled", False), ("ce", True)])
@pytest.mark.parametrize("name", NAMES)
def test_packed_loss_is_the_same_objective(shop, name, loss, tied):
    """Cutting the padding and scoring only target positions changes the work, not the loss or its gradient."""
    cfg = small_config(shop, dropout=0.0, max_len=60, loss=loss, negatives=20, tie_items=tied)
    if name == "query-sasrec" and loss == "sampled":  # it scores every item's text against the query
        with pytest.raises(UserError, match="use --loss ce"):
            build_model(name, cfg)
        return
    model = build_model(name, cfg, shop.sequences)
    _, batch = first_batch(shop, cfg, batch_size=16)
    assert int(batch.lengths.max()) < batch.items.shape[1]  # there is padding to cut
    results = []
    for packed in (False, True):
        model.zero_grad()
        torch.manual_seed(3)  # the same masks (bert4rec) and negatives (sampled) in both
        value = model.packed_loss(batch) if packed else model.calculate_loss(batch)
        value.backward()
        results.append((value.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (plain, plain_grads), (packed, packed_grads) = results
    assert packed == pytest.approx(plain, rel=1e-5)
    for a, b in zip(plain_grads, packed_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_tied_items_are_scored_by_the_embedding_table_alone(shop, name):
    model = build_model(name, small_config(shop, tie_items=True)).eval()
    assert "scorer.weight" not in model.state_dict() and "scorer.bias" in model.state_dict()
    untied = sum(p.numel() for p in build_model(name, small_config(shop)).parameters())
    rows = shop.sequences.n_items + 1
    assert sum(p.numel() for p in model.parameters()) == untied - rows * 16  # one table of hidden 16 fewer
    with torch.no_grad():
        model.item_embedding.weight[5] += 1.0  # moves item 5's input embedding and its score together
    hidden = torch.randn(3, 16)
    expected = hidden @ model.item_embedding.weight[:rows].T + model.scorer.bias
    assert torch.allclose(model.scorer(hidden), expected, atol=1e-5)
    copy = build_model(name, small_config(shop, tie_items=True))
    copy.load_state_dict(model.state_dict())  # strict: the same keys
    assert torch.equal(copy.scorer.weight, model.item_embedding.weight[:rows])
    with pytest.raises(UserError, match="--tie-items"):
        dp_compatible(model)


@pytest.mark.parametrize("name", ["gru4rec", "lstm", "sasrec"])
def test_causal_models_never_look_ahead(shop, name):
    model = build_model(name, small_config(shop)).eval()
    _, window = first_batch(shop, small_config(shop), batch_size=2)
    batch = model.training_view(window)
    hidden = model(batch)
    changed = SeqBatch(batch.items.clone(), batch.events, batch.gaps, batch.lengths)
    changed.items[:, 6:] = 1
    assert torch.allclose(model(changed)[:, :6], hidden[:, :6], atol=1e-6)
    assert not torch.allclose(model(changed)[:, 6:], hidden[:, 6:])


def test_bert4rec_masks_and_appends_mask_token(shop):
    model = build_model("bert4rec", small_config(shop, mask_ratio=0.5))
    _, batch = first_batch(shop, small_config(shop))
    view = model.training_view(batch)
    masked = view.items == model.mask_id
    assert masked.any() and (view.targets[masked] == batch.items[masked]).all() and (view.targets[~masked] == 0).all()
    # the last item is masked in about half of the sequences (what prediction asks for), on top of the cloze masks
    torch.manual_seed(0)
    many = model.training_view(
        SeqBatch(
            batch.items.repeat(20, 1), batch.events.repeat(20, 1), batch.gaps.repeat(20, 1), batch.lengths.repeat(20)
        )
    )
    last = many.items[torch.arange(len(many.lengths)), many.lengths - 1] == model.mask_id
    assert 0.4 < last.float().mean() < 0.95  # ½ forced, plus the cloze's own share of the rest


def test_bert4rec_counts_positions_from_the_end(shop):
    """Each sequence's last item is position 0, in training and for the [MASK] appended at prediction, however
    long the sequence and however much padding follows it."""
    model = build_model("bert4rec", small_config(shop)).eval()
    seen = []
    model.bert.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True)
    items = torch.tensor([[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    batch = SeqBatch(items, torch.zeros_like(items), torch.ones_like(items), torch.tensor([3, 1, 5]))
    model(batch)
    assert seen[-1][:, :3].tolist() == [[2, 1, 0], [0, 0, 0], [4, 3, 2]] and seen[-1][2].tolist() == [4, 3, 2, 1, 0]
    model.full_sort_predict(batch)
    appended = seen[-1][torch.arange(3), batch.lengths]  # the [MASK] slot
    assert appended.tolist() == [0, 0, 0] and seen[-1][0, :4].tolist() == [3, 2, 1, 0]
    # a sequence's scores do not depend on the padding after it
    alone = SeqBatch(items[:1, :3], torch.zeros_like(items[:1, :3]), torch.ones_like(items[:1, :3]), batch.lengths[:1])
    assert torch.allclose(model.full_sort_predict(alone), model.full_sort_predict(batch)[:1], atol=1e-5)


def test_sasrec_from_end_counts_positions_back_from_the_last_item_and_stays_causal(shop):
    model = build_model("sasrec", small_config(shop, positions="from-end")).eval()
    seen = []
    model.position_embedding.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    items = torch.tensor([[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    batch = SeqBatch(items, torch.ones_like(items), torch.ones_like(items), torch.tensor([3, 1, 5]))
    scores = model.full_sort_predict(batch)
    assert seen[-1][:, :3].tolist() == [[2, 1, 0], [0, 0, 0], [4, 3, 2]] and seen[-1][2].tolist() == [4, 3, 2, 1, 0]
    # a sequence's scores do not depend on the padding after it
    alone = SeqBatch(items[:1, :3], torch.ones_like(items[:1, :3]), torch.ones_like(items[:1, :3]), batch.lengths[:1])
    assert torch.allclose(model.full_sort_predict(alone), scores[:1], atol=1e-5)
    # an earlier position never sees which item comes later (only how many do)
    swapped = items.clone()
    swapped[2, 4] = 9
    hidden = model(SeqBatch(swapped, torch.ones_like(items), torch.ones_like(items), batch.lengths))
    assert torch.allclose(hidden[2, :4], model(batch)[2, :4], atol=1e-6) and not torch.allclose(
        hidden[2, 4], model(batch)[2, 4]
    )
    plain = build_model("sasrec", small_config(shop))
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain.eval().full_sort_predict(batch), scores)  # the option changes the model


@pytest.mark.parametrize(
    "options",
    [
        {"positions": "from-start"},
        {"positions": "from-end"},
        {"low_pass": 0.4},
        {"low_pass": 0.4, "low_pass_filter": "fourier"},
    ],
)
def test_sasrec_ranks_from_the_last_position_alone_with_the_full_forwards_figures(shop, options):
    """The last block computes only each sequence's last position when ranking: the same hidden state as every
    position's forward pass, for sequences of every length in one padded batch."""
    model = build_model("sasrec", small_config(shop, layers=2, low_pass_width=2, **options)).eval()
    items = torch.tensor([[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [1, 2, 3, 4, 5], [9, 3, 0, 0, 0]])
    batch = SeqBatch(items, torch.ones_like(items), torch.ones_like(items), torch.tensor([3, 1, 5, 2]))
    with torch.no_grad():
        full = model(batch)[torch.arange(4), batch.lengths - 1]
        last = model.last_hidden(batch)
    assert last.shape == full.shape and torch.allclose(last, full, atol=1e-5)
    assert not torch.allclose(last[0], model(batch)[0, 1], atol=1e-3)  # not some other position's state


def test_the_causal_low_pass_filter_averages_the_last_width_states_and_never_a_later_one(shop):
    from fedseqrec.models.sasrec import causal_mean

    x = torch.tensor([[1.0, 2.0, 4.0, 8.0, 0.0]]).unsqueeze(-1)  # one sequence of 4 items, then padding
    assert causal_mean(x, 2).squeeze().tolist() == [1.0, 1.5, 3.0, 6.0, 4.0]
    assert causal_mean(x, 10).squeeze().tolist() == pytest.approx([1.0, 1.5, 7 / 3, 3.75, 3.0])
    model = build_model("sasrec", small_config(shop, low_pass=0.5, low_pass_width=3, layers=2)).eval()
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 2 * 3 + 1  # a filter's norm a block
    items = torch.tensor([[1, 2, 3, 4, 5], [5, 6, 0, 0, 0]])
    batch = SeqBatch(items, torch.ones_like(items), torch.ones_like(items), torch.tensor([5, 2]))
    swapped = items.clone()
    swapped[0, 4] = 9
    hidden = model(SeqBatch(swapped, torch.ones_like(items), torch.ones_like(items), batch.lengths))
    assert torch.allclose(hidden[0, :4], model(batch)[0, :4], atol=1e-6)  # causal: later items unseen
    assert not torch.allclose(hidden[0, 4], model(batch)[0, 4])
    alone = SeqBatch(items[1:, :2], torch.ones_like(items[1:, :2]), torch.ones_like(items[1:, :2]), batch.lengths[1:])
    assert torch.allclose(model.full_sort_predict(alone), model.full_sort_predict(batch)[1:], atol=1e-5)
    plain = build_model("sasrec", small_config(shop, layers=2))
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(plain.eval().full_sort_predict(batch), model.full_sort_predict(batch))
    with pytest.raises(UserError, match="--low-pass"):
        build_model("gru4rec", small_config(shop, low_pass=0.5))


def test_the_fourier_filter_is_bsarecs_low_pass_of_the_left_padded_window_whatever_the_batch(shop):
    """BSARec's filter: rfft of the window (the sequence after zeros up to --max-len), the lowest c // 2 + 1
    frequencies kept, irfft. It reads later positions, and a sequence's figures do not depend on its batch."""
    from fedseqrec.models.sasrec import fourier_projections

    x = torch.randn(7, 4)
    spectrum = torch.fft.rfft(torch.cat([torch.zeros(5, 4), x]), dim=0, norm="ortho")
    spectrum[2:] = 0
    expected = torch.fft.irfft(spectrum, n=12, dim=0, norm="ortho")[-7:]
    projections = fourier_projections(12, 2)
    assert torch.allclose(projections[7, :7, :7] @ x, expected, atol=1e-6)
    assert not projections[7, 7:].any() and not projections[7, :, 7:].any()  # padding neither read nor written
    options = {"low_pass": 0.5, "low_pass_width": 3, "layers": 2}
    model = build_model("sasrec", small_config(shop, low_pass_filter="fourier", **options)).eval()
    for block in model.blocks:
        block.low_pass.beta.weight.data.fill_(0.5)  # β² = 1 is the identity
    items = torch.tensor([[1, 2, 3, 4, 5], [5, 6, 0, 0, 0]])
    batch = SeqBatch(items, torch.ones_like(items), torch.ones_like(items), torch.tensor([5, 2]))
    swapped = items.clone()
    swapped[0, 4] = 9
    hidden = model(SeqBatch(swapped, torch.ones_like(items), torch.ones_like(items), batch.lengths))
    assert not torch.allclose(hidden[0, 0], model(batch)[0, 0])  # an earlier position reads a later item
    alone = SeqBatch(items[1:, :2], torch.ones_like(items[1:, :2]), torch.ones_like(items[1:, :2]), batch.lengths[1:])
    assert torch.allclose(model.full_sort_predict(alone), model.full_sort_predict(batch)[1:], atol=1e-5)
    causal = build_model("sasrec", small_config(shop, **options)).eval()
    causal.load_state_dict(model.state_dict())  # the same parameters: the filter is a function of the options
    assert not torch.allclose(causal.full_sort_predict(batch), model.full_sort_predict(batch))


def test_training_examples_the_options_do_not_allow_are_refused(shop):
    cfg = small_config(shop, low_pass=0.5, low_pass_filter="fourier")
    with pytest.raises(UserError, match="--window prefixes"):
        cfg.check_training("random", private=False)  # every position of a window is a target
    cfg.check_training("prefixes", private=False)
    with pytest.raises(UserError, match="DP clips"):
        cfg.check_training("prefixes", private=True)
    with pytest.raises(UserError, match="not bert4rec"):
        small_config(shop, name="bert4rec").check_training("prefixes", private=False)


def test_bad_hyper_parameters_are_refused(shop):
    for bad in ({"hidden": 0}, {"dropout": 1.0}, {"max_len": -1}, {"loss": "bpr"}):
        with pytest.raises(UserError):
            build_model("sasrec", small_config(shop, **bad))
    with pytest.raises(UserError, match="available: gru4rec"):
        build_model("transformer", small_config(shop))
    with pytest.raises(UserError, match="divisible"):
        build_model("sasrec", small_config(shop, hidden=15, heads=2))


def dp_ready(model):
    fixed = dp_compatible(model)
    assert ModuleValidator.validate(fixed, strict=False) == []
    batch = first_batch_cache["batch"]
    model.eval(), fixed.eval()
    assert torch.allclose(model(batch), fixed(batch), atol=1e-5)  # same function, same weights
    return fixed.train()


first_batch_cache = {}


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize(
    "name, options", [(name, {}) for name in NAMES] + [("sasrec", {"low_pass": 0.5, "low_pass_width": 3})]
)
def test_trains_under_opacus_with_per_sample_gradients_for_every_parameter(shop, name, options, mode):
    torch.manual_seed(0)
    cfg = small_config(shop, **options)
    plain = build_model(name, cfg, shop.sequences)
    first_batch_cache["batch"] = plain.training_view(first_batch(shop, cfg)[1])
    model = dp_ready(plain)
    windows = TrainingWindows(shop.sequences, shop.split, max_len=cfg.max_len)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(windows, batch_size=16)
    made = make_private(
        model, optimizer, loader, noise_multiplier=0.5, max_grad_norm=1.0, mode=mode, label_smoothing=0.0
    )
    # Hooks sit on our own model, which keeps its state-dict names.
    optimizer, criterion, loader = made.optimizer, made.criterion, made.loader
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in trainable}
    steps = 0
    for tensors in loader:
        batch = windows.batch_of(tensors)
        if batch.items.shape[0] == 0:
            continue
        optimizer.zero_grad()
        loss = model.calculate_loss(batch, criterion)
        loss.backward()
        size = batch.items.shape[0]
        for n, p in trainable:
            if mode == "hooks":
                assert p.grad_sample is not None and p.grad_sample.shape[0] == size, n
            else:
                assert getattr(p, "_norm_sample", None) is not None and p._norm_sample.shape[0] == size, n
        optimizer.step()
        steps += 1
        if steps == 3:
            break
    assert steps == 3
    assert all(not torch.equal(before[n], p.detach()) for n, p in trainable)


def train_quickly(ds, name, epochs, window="recent", **options):
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_items=ds.sequences.n_items,
        n_events=len(ds.sequences.vocab.events) - 1,
        n_query_tokens=ds.sequences.tokens.n_tokens,
        hidden=32,
        layers=1,
        heads=2,
        inner=64,
        dropout=0.1,
        max_len=20,
        **options,
    )
    model = build_model(name, cfg, ds.sequences)
    windows = training_examples(ds.sequences, ds.split, None, cfg.max_len, window)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    from fedseqrec.models.training import train_epoch

    loader = DataLoader(windows, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        train_epoch(model, loader, optimizer, windows.batch_of)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_beats_popularity_on_planted_structure(name):
    from fedseqrec.evaluation.evaluator import evaluate
    from fedseqrec.models.pop import Popularity

    ds = load_dataset(DataConfig(shop=ShopConfig(users=500, items=200, categories=8)))
    seq, split = ds.sequences, ds.split
    train = np.concatenate([seq.sequence(u)[: split.train_end[u]] for u in range(1, seq.n_users + 1)])
    pop = evaluate(Popularity(seq.n_items).fit(train), seq, split, "valid", max_len=20)
    model = train_quickly(ds, name, epochs=50 if name == "bert4rec" else 12)  # the cloze objective learns slower
    learned = evaluate(model, seq, split, "valid", max_len=20)
    assert learned["NDCG@10"] > 2 * pop["NDCG@10"], (learned["NDCG@10"], pop["NDCG@10"])


def test_sasrec_trained_on_prefixes_with_bsarecs_fourier_filter_beats_popularity():
    """BSARec's own setting (--window prefixes, --low-pass-filter fourier) learns the planted structure too."""
    from fedseqrec.evaluation.evaluator import evaluate
    from fedseqrec.models.pop import Popularity

    ds = load_dataset(DataConfig(shop=ShopConfig(users=500, items=200, categories=8)))
    seq, split = ds.sequences, ds.split
    train = np.concatenate([seq.sequence(u)[: split.train_end[u]] for u in range(1, seq.n_users + 1)])
    pop = evaluate(Popularity(seq.n_items).fit(train), seq, split, "valid", max_len=20)
    options = {"low_pass": 0.7, "low_pass_filter": "fourier", "low_pass_width": 5}
    model = train_quickly(ds, "sasrec", epochs=3, window="prefixes", **options)
    learned = evaluate(model, seq, split, "valid", max_len=20)
    assert learned["NDCG@10"] > 2 * pop["NDCG@10"], (learned["NDCG@10"], pop["NDCG@10"])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("bias", [True, False])
def test_the_fused_cross_entropy_is_plain_cross_entropy_with_its_gradients(smoothing, bias):
    """Loss and every gradient as ``F.cross_entropy(F.linear(h, W, b), t, reduction="sum")``, in blocks smaller
    than the rows (so blocks join up), the table a view of a larger one (the tied item table)."""
    torch.manual_seed(0)
    table = torch.randn(40, 8, requires_grad=True)
    b = torch.randn(37, requires_grad=True) if bias else None
    hidden = torch.randn(23, 8, requires_grad=True)
    targets = torch.randint(1, 37, (23,))

    def grads(loss):
        wanted = [hidden, table] + ([b] if bias else [])
        return loss, torch.autograd.grad(2.5 * loss, wanted)

    fused, fused_grads = grads(fused_cross_entropy_sum(hidden, table[:37], b, targets, smoothing, block=5))
    plain = F.cross_entropy(F.linear(hidden, table[:37], b), targets, reduction="sum", label_smoothing=smoothing)
    plain, plain_grads = grads(plain)
    assert torch.allclose(fused, plain, rtol=1e-5)
    for mine, theirs in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_the_packed_loss_takes_the_fused_path_with_the_same_gradients(monkeypatch):
    shop = load_dataset(DataConfig(data="shop", shop=ShopConfig(users=60, items=40, days=10)))
    cfg = model_config_for(shop.sequences, ModelConfig(name="sasrec", hidden=16, max_len=20, dropout=0.0))
    model = build_model("sasrec", cfg)
    windows = TrainingWindows(shop.sequences, shop.split, max_len=20)
    batch = windows.batch_of([torch.stack(c) for c in zip(*(windows[i] for i in range(16)), strict=True)])
    calls = []
    real = base.fused_cross_entropy_sum
    monkeypatch.setattr(base, "fused_cross_entropy_sum", lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = torch.autograd.grad(model.packed_loss(batch), model.scorer.weight)[0]
    assert calls == [1]
    monkeypatch.setattr(SequentialRecommender, "_scores_by_table", lambda self: False)
    plain = torch.autograd.grad(model.packed_loss(batch), model.scorer.weight)[0]
    assert calls == [1] and torch.allclose(fused, plain, atol=1e-6)
