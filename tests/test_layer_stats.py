"""LayerStats and train/grad_norm: equal to a hand computation, hooks gone after the sampled batch, the image.

LayerStats writes under `per_layer/`; the global gradient norm is `optimisation/grad_norm`.
"""

import copy
import io

import numpy as np
import pytest
import torch
from helpers.tiny import tiny_classification_data
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit import Callback, LayerStats, ModelCheckpoint, Order, TensorBoardLogger, Trainer, TrainerError
from callbacks_kit.errors import LayerNotFoundError
from callbacks_kit.hooks import hooked_modules
from callbacks_kit.inspection.event_report import load
from callbacks_kit.inspection.render import line_height

LR = 0.1


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def fit(tmp_path, model, stats, epochs=1, samples=16, max_grad_norm=None, extra=()):
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), stats, *extra],
        log_every_n_steps=1,
        max_grad_norm=max_grad_norm,
        progress_bar=False,
    )
    loader = DataLoader(tiny_classification_data(samples), batch_size=16)
    trainer.fit(loader, epochs=epochs)
    return trainer, load(tmp_path)


def scalar(acc, tag, step=1):
    return {e.step: e.value for e in acc.Scalars(tag)}[step]


def test_one_step_equals_a_hand_computation(tmp_path):
    model = mlp()
    reference = copy.deepcopy(model)
    x, y = tiny_classification_data(16).tensors
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, o.detach().clone()))
             for n, m in reference.named_modules() if isinstance(m, nn.Linear)]  # fmt: skip
    nn.functional.cross_entropy(reference(x), y).backward()
    for hook in hooks:
        hook.remove()

    _, acc = fit(tmp_path, model, LayerStats(every_n_steps=1))

    for name in ("0", "2"):
        layer = reference.get_submodule(name)
        grad = torch.cat([layer.weight.grad.reshape(-1), layer.bias.grad.reshape(-1)])
        weight = torch.cat([layer.weight.reshape(-1), layer.bias.reshape(-1)]).detach()
        out = outputs[name]
        assert scalar(acc, f"per_layer/grad_norm/{name}") == pytest.approx(grad.norm().item(), rel=1e-5)
        # Plain SGD moves the weights by lr * grad: the update-to-weight ratio of that step.
        ratio = LR * grad.norm() / weight.norm()
        assert scalar(acc, f"per_layer/update_ratio/{name}") == pytest.approx(ratio.item(), rel=1e-4)
        assert scalar(acc, f"per_layer/act_mean/{name}") == pytest.approx(out.mean().item(), rel=1e-5, abs=1e-7)
        assert scalar(acc, f"per_layer/act_std/{name}") == pytest.approx(out.std().item(), rel=1e-5)
        assert scalar(acc, f"per_layer/act_zeros/{name}") == pytest.approx((out <= 0).float().mean().item())
    # The global norm of the step, as clip_grad_norm_ computes it, logged every log step.
    total = torch.cat([p.grad.reshape(-1) for p in reference.parameters()]).norm()
    assert scalar(acc, "optimisation/grad_norm") == pytest.approx(total.item(), rel=1e-5)
    assert "per_layer/act_zeros/1" not in acc.Tags()["scalars"]  # the ReLU is not a default layer


def test_grad_norm_reuses_the_clipping_norm(tmp_path):
    model = mlp()
    reference = copy.deepcopy(model)
    x, y = tiny_classification_data(16).tensors
    nn.functional.cross_entropy(reference(x), y).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e-3)  # the norm before clipping
    trainer, acc = fit(tmp_path, model, LayerStats(every_n_steps=1), max_grad_norm=1e-3)
    assert scalar(acc, "optimisation/grad_norm") == pytest.approx(expected.item(), rel=1e-5)
    # Clipped to 1e-3: the step moved the weights by lr * 1e-3 in all, whatever the gradient's size.
    moved = torch.cat(
        [(a - b).reshape(-1) for a, b in zip(model.parameters(), reference.parameters(), strict=True)]
    ).norm()
    assert moved.item() == pytest.approx(LR * 1e-3, rel=1e-3)


def test_hooks_live_for_the_sampled_batch_only(tmp_path):
    seen = []

    class Look(Callback):
        order = Order.INSPECT + 1  # after LayerStats at every event

        def on_before_forward(self, trainer):
            seen.append(("forward", trainer.state.global_step + 1, hooked_modules(trainer.unwrapped_model)))

        def on_train_batch_end(self, trainer):
            seen.append(("end", trainer.state.global_step, hooked_modules(trainer.unwrapped_model)))

    fit(tmp_path, mlp(), LayerStats(every_n_steps=3), epochs=6, extra=[Look()])
    for where, step, hooked in seen:
        sampled = step % 3 == 0
        assert hooked == (["0", "2"] if where == "forward" and sampled else []), (where, step, hooked)


def test_activation_image_per_layer(tmp_path):
    stats = LayerStats(every_n_steps=1, bins=20, scale=3)
    _, acc = fit(tmp_path, mlp(), stats, epochs=5)
    for name in ("0", "2"):
        events = acc.Images(f"per_layer/act_hist/{name}")
        last = events[-1]
        caption = 2 * line_height(12) + 4
        assert (last.height, last.width) == (caption + 20 * 3, max(5 * 3, 240))
        assert len(stats.columns[name]) == 5
        assert all(sum(column) == 16 * (6 if name == "0" else 3) for column in stats.columns[name])
        pixels = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
        heat = pixels[caption:, : 5 * 3]
        assert heat.std() > 0  # a real picture, not a blank canvas
        assert np.all(pixels[caption:, 5 * 3 :] == 255)  # padded to the minimum width


def test_a_filter_matching_nothing_is_refused_before_training(tmp_path):
    with pytest.raises(TrainerError, match="matches none of the model's"):
        fit(tmp_path, mlp(), LayerStats(layers="conv"))
    with pytest.raises(LayerNotFoundError, match="closest"):
        fit(tmp_path, mlp(), LayerStats(layers=["0", "fc"]))
    with pytest.raises(TrainerError, match="regular expression"):
        LayerStats(layers="(")
    with pytest.raises(TrainerError, match="at least 1"):
        LayerStats(every_n_steps=0)


def test_no_writer_on_other_processes_means_no_hooks(tmp_path):
    model = mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=LR), nn.CrossEntropyLoss(),
                      callbacks=[LayerStats(every_n_steps=1)], progress_bar=False)  # fmt: skip
    trainer.fit(DataLoader(tiny_classification_data(16), batch_size=8), epochs=1)
    assert hooked_modules(model) == []


def test_the_image_history_survives_a_resume(tmp_path):
    def run(epochs, resume_from=None):
        model = mlp()
        stats = LayerStats(every_n_steps=1)
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=LR),
            nn.CrossEntropyLoss(),
            callbacks=[
                TensorBoardLogger(str(tmp_path / "run"), graph=False, summary=False),
                stats,
                ModelCheckpoint(tmp_path / "ckpt"),
            ],  # fmt: skip
            log_every_n_steps=1,
            progress_bar=False,
        )
        trainer.fit(DataLoader(tiny_classification_data(16), batch_size=8), epochs=epochs, resume_from=resume_from)
        return stats

    first = run(2)
    resumed = run(3, resume_from="last")
    assert resumed.column_steps == [1, 2, 3, 4, 5, 6]
    assert resumed.columns["0"][:4] == first.columns["0"] and len(resumed.columns["0"]) == 6
    assert resumed.ranges == first.ranges
