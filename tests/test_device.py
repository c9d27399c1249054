"""``--device`` and ``--precision``: which device is chosen, what moves there, what comes back to the CPU, the GPU
share a simulated client asks Ray for. Every path runs on the CPU here; the last test runs only where torch sees a
CUDA GPU (the device check of benchmarks/gpu_check.sh), and says so when it is skipped."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, TINY_FLAGS

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.data.dataset import load_dataset
from fedseqrec.errors import UserError
from fedseqrec.models.base import SeqBatch
from fedseqrec.models.batching import TrainingWindows, training_loader
from fedseqrec.models.config import DeviceConfig
from fedseqrec.models.device import autocast, device_of, resolve_device, scores_on_cpu
from fedseqrec.models.optim import adamw
from fedseqrec.models.registry import build_model, model_config_for
from fedseqrec.models.training import train_epoch
from fedseqrec.simulation.engine import client_resources


def _no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _one_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_is_the_cpu_without_a_gpu_and_the_first_gpu_with_one(monkeypatch):
    _no_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    _one_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0) == resolve_device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_that_is_not_there_is_refused_with_what_to_do(monkeypatch):
    _no_gpu(monkeypatch)
    with pytest.raises(UserError, match="--device cuda: torch sees no CUDA GPU here .*use --device cpu or auto"):
        resolve_device("cuda")
    _one_gpu(monkeypatch)
    with pytest.raises(UserError, match="--device cuda:3: torch sees 1 GPU"):
        resolve_device("cuda:3")
    with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_the_command_line_refuses_a_device_it_cannot_name(cli):
    result = cli("train", *TINY_FLAGS[2:], "--device", "gpu")
    assert result.code == 2
    assert "--device must be auto, cpu, cuda or cuda:N" in result.err and "Traceback" not in result.err


def test_autocast_is_off_by_default_and_bf16_only_when_asked():
    assert TrainConfig().hardware == DeviceConfig("auto", "fp32") and TINY.fit.hardware.precision == "fp32"
    cpu, x = torch.device("cpu"), torch.randn(4, 8)
    with autocast(cpu, TrainConfig().hardware.precision):
        assert not torch.is_autocast_enabled("cpu")
        assert (x @ x.T).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (x @ x.T).dtype == torch.bfloat16


def test_a_batch_moves_whole_and_stays_put_where_it_is():
    batch = SeqBatch(*(torch.ones(2, 3, dtype=torch.long) for _ in range(3)), torch.tensor([3, 2]))
    assert batch.to(torch.device("cpu")) is batch
    moved = batch.to(torch.device("meta"))
    assert {t.device.type for t in (moved.items, moved.events, moved.gaps, moved.lengths)} == {"meta"}
    assert moved.targets is None and moved.queries is None


def _tiny_model_and_windows():
    ds = load_dataset(TINY.data)
    model = build_model("sasrec", model_config_for(ds.sequences, TINY.model), ds.sequences)
    return model, TrainingWindows(ds.sequences, ds.split, max_len=TINY.model.max_len)


def test_training_moves_each_batch_to_the_models_device_and_keeps_float32_weights():
    model, windows = _tiny_model_and_windows()
    asked = []

    class Watched(SeqBatch):
        def to(self, device):
            asked.append(device)
            return super().to(device)

    def to_batch(tensors):
        return Watched(**vars(windows.batch_of(tensors)))

    loader = training_loader(windows, 16, 0, False)
    optimizer = adamw(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss, steps = train_epoch(model, loader, optimizer, to_batch, max_steps=2, packed=True, precision="bf16")
    assert steps == 2 and asked == [device_of(model)] * 2 and loss > 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # autocast: the weights stay float32


def test_scores_come_back_to_the_cpu_in_float32():
    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def full_sort_predict(self, batch):
            return torch.ones(len(batch.lengths), 5, dtype=torch.bfloat16, device=batch.items.device)

    batch = SeqBatch(*(torch.ones(2, 3, dtype=torch.long) for _ in range(3)), torch.tensor([3, 2]))
    scores = scores_on_cpu(Half(), batch)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape == (2, 5)


def test_a_trained_model_records_its_device_and_loads_anywhere(cli, tmp_path):
    out = tmp_path / "run"
    flags = [f for i, f in enumerate(TINY_FLAGS) if f != "--clients" and TINY_FLAGS[i - 1] != "--clients"]
    assert cli("train", *flags, "--epochs", "1", "--device", "cpu", "--out", out).code == 0
    assert json.loads((out / "metrics.json").read_text())["device"] == "cpu"
    saved = torch.load(out / "model.pt", weights_only=True)
    assert {t.device.type for t in saved.values()} == {"cpu"}  # a GPU run's weights load on a CPU machine
    result = cli("evaluate", "--checkpoint", out, "--device", "cpu", "--json")
    assert result.code == 0 and json.loads(result.out)["test"]["NDCG@10"] >= 0


def test_a_simulated_client_asks_for_a_gpu_share_only_when_the_run_uses_a_gpu(monkeypatch):
    _no_gpu(monkeypatch)
    on = DeviceConfig
    assert client_resources(on("cpu"), 1.0, cpus=2, gpus=0) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert client_resources(on("auto"), 1.0, cpus=2, gpus=0) == {"num_cpus": 1.0, "num_gpus": 0.0}
    # as many clients side by side on the GPU as the CPUs hold; or the share asked for
    assert client_resources(on("auto"), 1.0, cpus=16, gpus=1)["num_gpus"] == pytest.approx(1 / 16)
    assert client_resources(on("cuda"), 2.0, cpus=16, gpus=2)["num_gpus"] == pytest.approx(0.25)
    assert client_resources(on("auto"), 1.0, client_gpus=0.5, cpus=16, gpus=1)["num_gpus"] == 0.5
    assert client_resources(on("auto"), 1.0, client_gpus=0.0, cpus=16, gpus=1)["num_gpus"] == 0.0
    with pytest.raises(UserError, match="--client-gpus 0.5: --device cpu keeps the clients on the CPU"):
        client_resources(on("cpu"), 1.0, client_gpus=0.5, cpus=16, gpus=1)
    with pytest.raises(UserError, match="--client-gpus 0.5: torch sees no GPU here"):
        client_resources(on("auto"), 1.0, client_gpus=0.5, cpus=16, gpus=0)
    with pytest.raises(UserError, match="Ray shows each simulated client only the GPU it is given"):
        client_resources(on("cuda:1"), 1.0, cpus=16, gpus=2)
    with pytest.raises(UserError, match="--device cuda: torch sees no CUDA GPU"):
        client_resources(on("cuda"), 1.0, cpus=16, gpus=0)
    with pytest.raises(UserError, match="--client-gpus 0 hides the GPUs"):
        client_resources(on("cuda"), 1.0, client_gpus=0.0, cpus=16, gpus=1)


def test_bf16_is_refused_where_per_user_gradients_are_clipped():
    TINY.replace(precision="bf16").validate()  # plain local training takes it
    for mechanism in ("dp-sgd", "user-level"):
        cfg = TINY.replace(precision="bf16", mechanism=mechanism, noise_multiplier=1.0)
        with pytest.raises(UserError, match=f"--precision bf16 with --privacy {mechanism}: per-user gradients"):
            cfg.validate()


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to torch: the GPU path runs where one is"
)
def test_on_a_gpu_training_scoring_and_user_level_dp_match_the_cpu():
    from fedseqrec.privacy.per_user import Contribution, clipped_update_sum

    model, windows = _tiny_model_and_windows()
    gpu = model.__class__(model.cfg)
    gpu.load_state_dict(model.state_dict())
    gpu.to(resolve_device("cuda"))
    batch = windows.batch_of([torch.stack(c) for c in zip(*(windows[i] for i in range(8)), strict=True)])
    model.eval(), gpu.eval()
    assert torch.allclose(scores_on_cpu(model, batch), scores_on_cpu(gpu, batch), atol=1e-4)
    rule = Contribution(clip=1.0)
    users = torch.arange(8).numpy()
    on_cpu, norms_cpu, _ = clipped_update_sum(model, windows, users, rule)
    on_gpu, norms_gpu, _ = clipped_update_sum(gpu, windows, users, rule)
    assert all(on_gpu[k].device.type == "cpu" and torch.allclose(on_cpu[k], on_gpu[k], atol=1e-4) for k in on_cpu)
    assert abs(norms_cpu - norms_gpu).max() < 1e-3
    loader = training_loader(windows, 16, 0, False)
    optimizer = adamw(gpu.parameters(), lr=1e-3, weight_decay=0.0)
    loss, steps = train_epoch(gpu, loader, optimizer, windows.batch_of, max_steps=3, packed=True, precision="bf16")
    assert steps == 3 and loss > 0 and device_of(gpu).type == "cuda"


def test_a_simulation_refused_for_its_client_resources_lets_go_of_its_run_folder(tmp_path):
    """The folder is held from the moment the run is planned: a refusal after that must not leave it held by this
    process (a notebook's next run of it would be told another process has it)."""
    from fedseqrec.results.folder import RunFolder
    from fedseqrec.simulation.engine import simulate

    out = tmp_path / "run"
    with pytest.raises(UserError, match="--client-gpus 0.5"):
        simulate(TINY, out=out, client_gpus=0.5)
    RunFolder(out).lock().release()  # refused (BlockingIOError as a UserError) while the run still held it
