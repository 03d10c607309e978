"""Two processes through torchrun: they see each other alike from the CLI's side and the Trainer's,
and a process whose peer died says so instead of blaming the model.
"""

from helpers.paths import WORKERS
from helpers.processes import run_distributed


def test_the_cli_and_the_trainer_see_the_same_two_gloo_processes(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import torch\n"
        "from callbacks_kit import Trainer\n"
        "from callbacks_kit.distributed import process_state\n"
        "s = process_state()\n"  # no cpu flag: ACCELERATE_USE_CPU and the launch decide, as for the CLI
        "print(f'state rank {s.process_index} of {s.num_processes} backend {s.backend} main {s.is_main_process}')\n"
        "m = torch.nn.Linear(2, 2)\n"
        "a = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), progress_bar=False).accelerator\n"
        "print(f'trainer rank {a.process_index} of {a.num_processes} main {a.is_main_process}', flush=True)\n"
    )
    out = run_distributed(script).stdout
    for rank in (0, 1):
        assert f"state rank {rank} of 2 backend gloo main {rank == 0}" in out, out
        assert f"trainer rank {rank} of 2 main {rank == 0}" in out, out


def test_a_dead_peer_is_reported_as_such_not_as_a_failing_model(tmp_path):
    try:
        run_distributed(WORKERS / "peer_failure_worker.py", timeout=120)
    except AssertionError as exc:
        output = str(exc)
    else:
        raise AssertionError("rank 0 trained although its peer had left")
    assert "rank 1 leaves" in output
    assert "PeerProcessError: another process of this launch failed" in output, output[-4000:]
    assert "fails in the model or the loss" not in output
