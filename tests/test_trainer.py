"""The Trainer's loop: events, accumulation, stopping, precision, metrics and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Callback, Trainer, TrainerError, accuracy
from callbacks_kit.callbacks.base import EVENTS


class Recorder(Callback):
    """Records every event with the step it saw."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.steps_at_backward: list[int] = []

    def __getattribute__(self, name: str):
        if name in EVENTS:

            def record(trainer: Trainer) -> None:
                self.events.append(name)
                if name == "on_after_backward":
                    self.steps_at_backward.append(trainer.state.global_step)

            return record
        return object.__getattribute__(self, name)


def make_trainer(callbacks=(), **kwargs) -> Trainer:
    model = tiny_mlp()
    kwargs.setdefault("progress_bar", False)
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=callbacks,
        **kwargs,
    )


def loaders(train_n: int = 64, val_n: int = 30, batch: int = 8) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(tiny_classification_data(train_n), batch_size=batch, shuffle=True),
        DataLoader(tiny_classification_data(val_n, seed=1), batch_size=batch),
    )


def expected_events(epochs: int, train_batches: int, val_batches: int, steps_on: set[int]) -> list[str]:
    events = ["on_fit_start"]
    for _ in range(epochs):
        events.append("on_epoch_start")
        for b in range(train_batches):
            events += ["on_train_batch_start", "on_before_forward"]
            if b in steps_on:
                events.append("on_after_backward")
            events.append("on_train_batch_end")
        events += ["on_validation_start", *["on_validation_batch_end"] * val_batches, "on_validation_end"]
        events.append("on_epoch_end")
    return [*events, "on_fit_end", "on_teardown"]


def test_events_fire_in_order_and_number():
    recorder = Recorder()
    trainer = make_trainer([recorder])
    train, val = loaders()
    state = trainer.fit(train, val, epochs=2)
    assert recorder.events == expected_events(2, 8, 4, steps_on=set(range(8)))
    assert state.global_step == 16 and state.epoch == 2


def test_accumulation_steps_only_on_optimizer_steps():
    recorder = Recorder()
    trainer = make_trainer([recorder], gradient_accumulation_steps=3)
    train, val = loaders()
    params_before = [p.detach().clone() for p in trainer.model.parameters()]
    state = trainer.fit(train, val, epochs=2)
    # 8 batches: steps after batches 3, 6 and the last one (the loader's end flushes).
    assert recorder.events == expected_events(2, 8, 4, steps_on={2, 5, 7})
    assert state.global_step == 6
    assert recorder.steps_at_backward == [0, 1, 2, 3, 4, 5]
    assert any(not torch.equal(a, b) for a, b in zip(params_before, trainer.model.parameters(), strict=True))


def test_accumulated_gradients_equal_one_big_batch():
    """Accumulating 4 batches of 4 gives the gradient of one batch of 16."""
    data = tiny_classification_data(16)
    grads: list[list[torch.Tensor]] = []

    class Grab(Callback):
        def on_after_backward(self, trainer: Trainer) -> None:
            grads.append([p.grad.clone() for p in trainer.model.parameters()])

    for batch, accumulation in ((16, 1), (4, 4)):
        trainer = make_trainer([Grab()], gradient_accumulation_steps=accumulation)
        trainer.fit(DataLoader(data, batch_size=batch), epochs=1)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_callbacks_run_by_order():
    calls: list[str] = []

    class A(Callback):
        order = 10

        def on_fit_start(self, trainer: Trainer) -> None:
            calls.append("A")

    class B(Callback):
        order = -5

        def on_fit_start(self, trainer: Trainer) -> None:
            calls.append("B")

    train, _ = loaders()
    make_trainer([A(), B()]).fit(train, epochs=1)
    assert calls == ["B", "A"]


def test_unknown_event_name_is_rejected_with_a_hint():
    class Typo(Callback):
        def on_epoch_ends(self, trainer: Trainer) -> None:
            pass

    with pytest.raises(TypeError, match="did you mean 'on_epoch_end'"):
        make_trainer([Typo()])


def test_should_stop_mid_epoch_stops_at_the_batch_boundary():
    recorder = Recorder()

    class StopAt(Callback):
        def on_train_batch_end(self, trainer: Trainer) -> None:
            if trainer.state.global_step == 3:
                trainer.state.should_stop = True

    train, val = loaders()
    state = make_trainer([StopAt(), recorder]).fit(train, val, epochs=5)
    assert state.global_step == 3 and state.epoch == 0
    assert "on_validation_start" not in recorder.events and "on_epoch_end" not in recorder.events
    assert recorder.events[-2:] == ["on_fit_end", "on_teardown"]


def test_should_stop_at_epoch_end_stops_after_that_epoch():
    class StopAfterFirst(Callback):
        def on_epoch_end(self, trainer: Trainer) -> None:
            trainer.state.should_stop = True

    train, val = loaders()
    state = make_trainer([StopAfterFirst()]).fit(train, val, epochs=5)
    assert state.epoch == 1 and state.global_step == 8
    assert "val/accuracy" in state.metrics


def test_bf16_autocast_on_cpu():
    dtypes: list[torch.dtype] = []
    trainer = make_trainer(mixed_precision="bf16", cpu=True)
    trainer.unwrapped_model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    train, val = loaders()
    state = trainer.fit(train, val, epochs=2)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    assert torch.isfinite(torch.tensor(state.metrics["val/loss"]))


def test_metrics_on_uneven_dataset_count_each_sample_once():
    trainer = make_trainer()
    val_data = tiny_classification_data(30, seed=1)
    results = trainer.evaluate(DataLoader(val_data, batch_size=8))  # batches of 8, 8, 8, 6
    model = trainer.unwrapped_model.eval()
    with torch.no_grad():
        logits = model(val_data.tensors[0])
    expected_acc = (logits.argmax(1) == val_data.tensors[1]).float().mean().item()
    expected_loss = nn.functional.cross_entropy(logits, val_data.tensors[1]).item()
    assert results["val/accuracy"] == pytest.approx(expected_acc, abs=1e-6)
    assert results["val/loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_loss_is_read_only_at_log_steps():
    seen: list[tuple[int, bool, float | None]] = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer: Trainer) -> None:
            s = trainer.state
            seen.append((s.global_step, s.is_log_step, s.metrics.get("train/loss")))

    train, _ = loaders()
    make_trainer([Watch()], log_every_n_steps=3).fit(train, epochs=1)
    assert [step for step, is_log, _ in seen if is_log] == [3, 6]
    assert all(loss is None for step, _, loss in seen if step < 3)
    assert seen[3][2] == seen[4][2]  # steps 4 and 5 still show the loss read at step 3


def test_model_that_returns_its_loss():
    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_mlp()

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.net(x)
            return {"loss": nn.functional.cross_entropy(logits, y), "logits": logits}

    model = WithLoss()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), progress_bar=False)
    train, val = loaders()
    state = trainer.fit(train, val, epochs=1)
    assert state.metrics["val/loss"] > 0


def test_override_unpack_batch_for_other_batch_shapes():
    class TripleTrainer(Trainer):
        def unpack_batch(self, batch):
            inputs, targets, _weights = batch
            return inputs, targets

    data = tiny_classification_data(32)
    triples = TensorDataset(data.tensors[0], data.tensors[1], torch.ones(32))
    model = tiny_mlp()
    trainer = TripleTrainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), progress_bar=False
    )
    assert trainer.fit(DataLoader(triples, batch_size=8), epochs=1).global_step == 4


# ---------------------------------------------------------------------------- bad input
def test_bad_mixed_precision_string():
    with pytest.raises(TrainerError, match="'fp32' is not one of"):
        make_trainer(mixed_precision="fp32")


def test_fp16_without_gpu_names_bf16():
    with pytest.raises(TrainerError, match="needs a CUDA GPU.*bf16"):
        make_trainer(mixed_precision="fp16", cpu=True)


def test_empty_loader():
    empty = DataLoader(tiny_classification_data(4), batch_size=8, drop_last=True)
    with pytest.raises(TrainerError, match="train_loader is empty"):
        make_trainer().fit(empty, epochs=1)


def test_loss_that_is_not_a_scalar_fails_before_any_step():
    model = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(reduction="none"), progress_bar=False
    )
    train, _ = loaders()
    with pytest.raises(TrainerError, match=r"shape \(8,\), not a scalar.*reduction='mean'"):
        trainer.fit(train, epochs=1)
    assert trainer.state.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_batch_that_cannot_be_unpacked():
    data = tiny_classification_data(16)
    triples = TensorDataset(data.tensors[0], data.tensors[1], data.tensors[1])
    with pytest.raises(TrainerError, match="cannot unpack a batch.*override `unpack_batch"):
        make_trainer().fit(DataLoader(triples, batch_size=8), epochs=1)


def test_metric_that_is_not_a_scalar():
    model = tiny_mlp()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        metrics={"per_sample": lambda o, t: (o.argmax(1) == t).float()},
        progress_bar=False,
    )
    train, val = loaders()
    with pytest.raises(TrainerError, match="metric 'per_sample' returned Tensor"):
        trainer.fit(train, val, epochs=1)
    assert trainer.state.global_step == 0


def test_all_parameters_frozen_is_explained():
    model = tiny_mlp()
    model.requires_grad_(False)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), progress_bar=False)
    train, _ = loaders()
    with pytest.raises(TrainerError, match="does not require grad.*frozen"):
        trainer.fit(train, epochs=1)


def test_exception_fires_on_exception_and_is_reraised():
    seen: list[BaseException | None] = []

    class Boom(Callback):
        def on_train_batch_end(self, trainer: Trainer) -> None:
            raise RuntimeError("boom")

    class Watch(Callback):
        def on_exception(self, trainer: Trainer) -> None:
            seen.append(trainer.exception)

    train, _ = loaders()
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer([Boom(), Watch()]).fit(train, epochs=1)
    assert isinstance(seen[0], RuntimeError)


def test_bad_numbers():
    with pytest.raises(TrainerError, match="gradient_accumulation_steps"):
        make_trainer(gradient_accumulation_steps=0)
    with pytest.raises(TrainerError, match="max_grad_norm"):
        make_trainer(max_grad_norm=-1.0)
    train, _ = loaders()
    with pytest.raises(TrainerError, match="epochs must be a positive int"):
        make_trainer().fit(train, epochs=0)


def test_gradient_clipping_bounds_the_norm():
    norms: list[float] = []

    class Norm(Callback):
        order = 1000

        def on_train_batch_end(self, trainer: Trainer) -> None:
            pass

        def on_after_backward(self, trainer: Trainer) -> None:
            # Scale gradients up so clipping has something to do; clipping runs after this event.
            for p in trainer.model.parameters():
                p.grad.mul_(1000)

    class Capture(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[override]
            total = torch.norm(torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"]]))
            norms.append(float(total))
            return super().step(closure)

    model = tiny_mlp()
    trainer = Trainer(
        model,
        Capture(model.parameters(), lr=0.01),
        nn.CrossEntropyLoss(),
        callbacks=[Norm()],
        max_grad_norm=1.0,
        progress_bar=False,
    )
    train, _ = loaders()
    trainer.fit(train, epochs=1)
    assert norms and max(norms) <= 1.0 + 1e-4


def test_evaluate_on_fresh_loaders_never_reuses_a_dead_loaders_preparation():
    # CPython reuses the address (the id) of a freed DataLoader for the next one: a cache keyed
    # by id alone once evaluated a new loader with an old loader's data and batch count.
    trainer = make_trainer()
    for size in (8, 40, 16, 24, 32, 8, 40):
        data = tiny_classification_data(size, seed=size)
        results = trainer.evaluate(DataLoader(data, batch_size=8))
        net = trainer.unwrapped_model
        with torch.no_grad():
            expected = (net(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean().item()
        assert results["val/accuracy"] == pytest.approx(expected, abs=1e-6), size


def test_an_exit_from_on_fit_end_does_not_also_fire_on_exception():
    # PreemptionHandler exits from on_fit_end: loggers must not record the run a second time as failed.
    calls: list[str] = []

    class Record(Callback):
        def on_fit_end(self, trainer: Trainer) -> None:
            calls.append("fit_end")

        def on_exception(self, trainer: Trainer) -> None:
            calls.append("exception")

    class ExitAtTheEnd(Callback):
        order = 1000

        def on_fit_end(self, trainer: Trainer) -> None:
            raise SystemExit(143)

    trainer = make_trainer([Record(), ExitAtTheEnd()])
    with pytest.raises(SystemExit):
        trainer.fit(*loaders(), epochs=1)
    assert calls == ["fit_end"]


class ReplaceBatch(Callback):
    """Replaces every training batch with its own (as MixUp does) and records what the forward got."""

    def __init__(self, model: nn.Module) -> None:
        self.forward_inputs: list[torch.Tensor] = []
        self.replacements: list[tuple[torch.Tensor, torch.Tensor]] = []
        model.register_forward_pre_hook(lambda _module, args: self.forward_inputs.append(args[0]))

    def on_before_forward(self, trainer: Trainer) -> None:
        inputs = trainer.last_inputs * 0 + len(self.replacements)
        targets = torch.nn.functional.one_hot(trainer.last_targets, 3).float()  # soft targets reach the loss
        trainer.last_inputs, trainer.last_targets = inputs, targets
        self.replacements.append((inputs, targets))

    def on_train_batch_end(self, trainer: Trainer) -> None:
        assert trainer.last_inputs is self.replacements[-1][0]
        assert trainer.last_targets is self.replacements[-1][1]


def test_a_callback_replaces_the_batch_before_the_forward():
    model = tiny_mlp()
    replace = ReplaceBatch(model)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), callbacks=[replace])
    trainer.fit(loaders(train_n=24)[0], epochs=1)
    assert len(replace.replacements) == 3
    trained = replace.forward_inputs[-3:]  # before them, the sanity check's forward
    assert [x is r[0] for x, r in zip(trained, replace.replacements, strict=True)] == [True] * 3


def test_evaluate_another_model_names_its_prefix():
    trainer = make_trainer()
    other = tiny_mlp(seed=1)
    seen: list[str] = []

    class Prefix(Callback):
        def on_validation_start(self, trainer: Trainer) -> None:
            seen.append(trainer.state.validation_prefix)

    trainer.callbacks.append(Prefix())
    val = loaders()[1]
    ours = trainer.evaluate(val)
    theirs = trainer.evaluate(val, prefix="val_ema", model=other)
    expected = sum(nn.CrossEntropyLoss(reduction="sum")(other(x), y).item() for x, y in val) / 30
    assert theirs["val_ema/loss"] == pytest.approx(expected, rel=1e-5)
    assert ours["val/loss"] != pytest.approx(theirs["val_ema/loss"])
    assert seen == ["val", "val_ema"] and trainer.state.validation_prefix == "val"
