"""train.py and test.py on small real tensors: one epoch's statistics, logging, a falling loss,
the non-finite-loss stop (skipped on the device, raised at the next read), the host reads of an
epoch, and evaluation outputs."""
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from host_reads import host_reads
from models import build_model
from test import test
from train import EpochHooks, NonFiniteLossError, TrainSettings, train


def separable_loader(n=64, n_mels=32, n_frames=96, n_classes=4, batch_size=8, seed=0):
    """Spectrogram-shaped inputs whose class is a loud band of mel rows: learnable in a few epochs."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    inputs = torch.randn(n, n_mels, n_frames, generator=generator)
    band = n_mels // n_classes
    for i, label in enumerate(labels):
        inputs[i, label * band:(label + 1) * band] += 3.0
    return DataLoader(TensorDataset(inputs, labels), batch_size=batch_size, shuffle=True, generator=generator)


def make_model(n_classes=4):
    torch.manual_seed(0)
    return build_model("cnn1d", n_mels=32, n_frames=96, n_classes=n_classes, faithful=False)


def test_train_returns_epoch_statistics_and_logs_every_interval():
    model, loader = make_model(), separable_loader(n=64, batch_size=4)  # 16 batches
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    calls = []
    stats = train(model, loader, optimizer, "cpu", TrainSettings(log_interval=5),
                  EpochHooks(on_log=lambda examples, loss: calls.append((examples, loss))))
    assert stats["examples"] == 64
    assert 0.0 <= stats["accuracy"] <= 1.0 and math.isfinite(stats["loss"])
    # batches 5, 10, 15, then the epoch's last partial interval (batch 16): examples seen so far in the
    # epoch, and the mean loss over the interval
    assert [examples for examples, _ in calls] == [20, 40, 60, 64]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in calls)


def test_training_lowers_the_loss_and_test_scores_it():
    model, loader = make_model(), separable_loader()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = test(model, loader, "cpu")
    losses = [train(model, loader, optimizer, "cpu")["loss"] for _ in range(5)]
    after = test(model, loader, "cpu")
    assert losses[-1] < losses[0]
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > 0.9


def test_test_returns_consistent_arrays_without_touching_the_model():
    model, loader = make_model(), separable_loader(n=20, batch_size=6)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = test(model, loader, "cpu")
    assert not model.training
    for key, value in model.state_dict().items():  # no batch-norm update, no gradient step
        assert torch.equal(value, weights[key]), key
    assert result["examples"] == 20
    assert result["targets"].shape == result["predictions"].shape == (20,)
    assert result["probabilities"].shape == (20, 4)
    np.testing.assert_allclose(result["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(result["predictions"], result["probabilities"].argmax(axis=1))
    assert result["accuracy"] == pytest.approx(np.mean(result["predictions"] == result["targets"]))
    assert sorted(result["targets"].tolist()) == sorted([i % 4 for i in range(20)])


def test_a_diverging_run_raises_before_the_bad_step():
    model, loader = make_model(), separable_loader()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e30)  # the first step blows the weights up
    with pytest.raises(NonFiniteLossError, match="loss became nan at batch"):
        train(model, loader, optimizer, "cpu")


def test_empty_loader_is_a_clear_error():
    model = make_model()
    empty = DataLoader(TensorDataset(torch.zeros(0, 32, 96), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="training split is empty"):
        train(model, empty, torch.optim.Adam(model.parameters()), "cpu")
    with pytest.raises(ValueError, match="split is empty"):
        test(model, empty, "cpu")


def test_epoch_losses_per_example_and_per_batch_differ_by_the_short_last_batch():
    model = make_model()
    loader = DataLoader(separable_loader(n=20).dataset, batch_size=6)  # fixed batches of 6, 6, 6 and 2
    losses = []
    with torch.no_grad():
        for inputs, targets in loader:
            losses.append((torch.nn.functional.cross_entropy(model.eval()(inputs)[0], targets).item(), len(targets)))
    torch.manual_seed(1)
    result = test(model, loader, "cpu")
    per_example = sum(loss * n for loss, n in losses) / 20
    per_batch = sum(loss for loss, _ in losses) / len(losses)
    assert result["loss"] == pytest.approx(per_example, rel=1e-5)
    assert result["batch_loss"] == pytest.approx(per_batch, rel=1e-5)
    assert result["loss"] != pytest.approx(result["batch_loss"], rel=1e-4)
    stats = train(model, loader, torch.optim.SGD(model.parameters(), lr=0.0), "cpu")  # lr 0: weights kept
    assert stats["batch_loss"] != pytest.approx(stats["loss"], rel=1e-4) and math.isfinite(stats["batch_loss"])


def fixed_batches(n_batches=12, batch_size=4, bad_batch=None):
    """A list of separable_loader's batches (no sampler of its own to read); ``bad_batch`` (1-based) holds inf."""
    batches = [(inputs, targets) for inputs, targets in DataLoader(separable_loader(n=n_batches * batch_size).dataset,
                                                                   batch_size=batch_size)]
    if bad_batch is not None:
        batches[bad_batch - 1][0][0, 0, 0] = float("inf")
    return batches


def test_an_epoch_reads_the_device_once_per_log_interval():
    batches, logged = fixed_batches(12), []
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # main.py's: it skips on the device
    with host_reads("cpu") as reads:
        stats = train(model, batches, optimizer, "cpu", TrainSettings(log_interval=4),
                      EpochHooks(on_log=lambda *row: logged.append(row)))
    assert 1 <= reads["reads"] <= 12 // 4, reads  # one read per interval, none per step
    assert [examples for examples, _ in logged] == [16, 32, 48] and stats["examples"] == 48
    # the counter sees per-step reads: an unfused optimiser's skip is decided on the host at every step
    unfused = torch.optim.Adam(model.parameters(), lr=1e-3)
    with host_reads("cpu") as control:
        train(model, batches, unfused, "cpu", settings=TrainSettings(log_interval=4))
    assert control["reads"] >= 12


def test_a_non_finite_loss_skips_its_step_on_the_device_and_raises_at_the_next_read():
    def trained(batches, log_interval):
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4, fused=True)
        try:
            train(model, batches, optimizer, "cpu", settings=TrainSettings(log_interval=log_interval))
        except NonFiniteLossError as error:
            return model, optimizer, str(error)
        return model, optimizer, None

    model, optimizer, message = trained(fixed_batches(12, bad_batch=6), log_interval=5)
    assert "loss became nan at batch 6 (after 20 examples of this epoch)" in message
    clean, clean_optimizer, none = trained(fixed_batches(12)[:5], log_interval=5)  # only the batches before it
    assert none is None
    for (name, weight), reference in zip(model.named_parameters(), clean.parameters()):
        assert torch.equal(weight, reference), name  # batches 6-10 ran, yet none of them moved a weight
    for param, reference in zip(model.parameters(), clean.parameters()):
        state, clean_state = optimizer.state[param], clean_optimizer.state[reference]
        for key in ("step", "exp_avg", "exp_avg_sq"):  # nor Adam's step count or moments
            assert torch.equal(state[key], clean_state[key]), key


@pytest.mark.slow  # torch.compile, twice
@pytest.mark.parametrize("dynamic_batch, graphs", [(True, 1), (False, 2)])
def test_the_epochs_last_smaller_batch_compiles_no_second_graph(dynamic_batch, graphs):
    compiled = []

    def counting_backend(graph, example_inputs):  # torch.compile calls it once per graph it compiles
        compiled.append(graph)
        return graph.forward

    torch._dynamo.reset()
    model = make_model()
    batches = fixed_batches(3)
    batches[-1] = (batches[-1][0][:3], batches[-1][1][:3])  # 4, 4, then 3 examples
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    train(torch.compile(model, backend=counting_backend), batches, optimizer, "cpu",
          TrainSettings(dynamic_batch=dynamic_batch))
    assert len(compiled) == graphs
