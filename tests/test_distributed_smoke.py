"""A two-process run through torchrun: both processes start and see each other."""

from helpers.processes import run_distributed


def test_two_gloo_processes(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "from accelerate import PartialState\n"
        "s = PartialState(cpu=True)\n"
        "print(f'rank {s.process_index} of {s.num_processes} backend {s.backend}', flush=True)\n"
    )
    out = run_distributed(script).stdout
    assert "rank 0 of 2 backend gloo" in out and "rank 1 of 2 backend gloo" in out
