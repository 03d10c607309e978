"""The performance benchmark of callbacks_kit: prints tables, writes JSON, enforces the budgets.

    python scripts/benchmark.py [--quick] [--json results.json] [--repeats N] [--threads N]

Sections (docs/performance.md shows a full run and explains the method):
  1. loop        time per optimizer step of the Trainer with its default callbacks, and of
                 PyTorch Lightning and pytorch-accelerated when installed, against a
                 hand-written Accelerate loop run in lockstep with each (same model, data
                 pre-generated on the device, optimizer); median of the runs; a tiny MLP
                 and a small CNN. CPU time on a CPU, wall time on a GPU.
  2. callbacks   every callback of the main job (`callbacks-kit train` with its default
                 options, one epoch of ResNet-18): time per call and share of the epoch.
  2b. error-views  TopLosses, ClassReport and Embeddings in the main job (`--embeddings 500`):
                 time per call and share of an epoch.
  3. input       whether the main job waits for its data (built-in shapes; ImageFolder JPEGs).
  4. histograms  the device histograms against SummaryWriter.add_histogram (ResNet-18, -50).
  5. syncs       host-device syncs on non-logging steps.
  6. throughput  on a GPU (or with --throughput): ResNet-50 images/s, bf16 and fp16, of the
                 Trainer with the main job's default callbacks against the hand loop.
  7. checkpoints training stall per checkpoint save of the main job's ResNet-18, synchronous
                 against asynchronous, side by side.
  8. end-to-end  the main job with its default callbacks against the same training without.
  9. ema         one EMA weight-average update against one ResNet-18 training step.
  10. startup    `callbacks-kit --help`, `train --help` and an argument error against
                 `python -c "import torch"`, each a fresh process, taking turns; medians.
  11. profiler   the Trainer's steps with a Profiler outside its window against without one.
Budgets: Trainer (progress bar on) <= 1.02x the hand loop on the MLP and <= 1.01x on the
CNN; each inspection callback <= 3% of an epoch, each error-analysis view <= 3%; device
histograms >= 4x faster on a CPU; zero syncs on a non-logging step with the default callbacks
and the TensorBoardLogger; an asynchronous save's stall <= 15% of a synchronous one's; the
main job end to end <= 1.05x; an EMA update <= 10% of a ResNet-18 step; CLI help and argument
errors <= 1.5x torch's import time; a Profiler outside its window <= 1.01x the steps without it.
Exit status 1 when one is missed. --quick is a smoke run: its timing budgets are shown, not
enforced.

One module per section (`loop`, `callbacks`, `error_views`, `inputs`, `histograms`, `syncs`,
`throughput`, `checkpoints`, `end_to_end`, `ema`, `startup`, `profiler`),
each with a `run(bench)` that measures, prints its table and checks its budgets; `suite`
parses the options and runs them in order; `common` holds what they share, `workloads` the
models and the hand-written loop, `lockstep` and `peers` the method and the other
frameworks of section 1, `sync_counter` the host-sync counter that the tests also use. It
is not part of the installed package: run it from a checkout, as `python scripts/benchmark.py`.
"""
