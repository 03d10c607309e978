"""Helpers of the test suite, imported as `helpers.<module>`.

setup.cfg's `[tool:pytest] pythonpath = . tests` puts the repository root and tests/ on
`sys.path`, so tests import `helpers` (and `benchmarks`, at the root) by name; the worker
scripts in `workers/` get the same two folders through `PYTHONPATH` from the launchers in
`helpers.processes` and `helpers.checkpoints`.

- `paths`: the repository's folders (REPO, EXAMPLES, WORKERS).
- `tiny`: tiny models and data that train in a few steps.
- `processes`: running an example, or a script in real gloo processes with torchrun.
- `checkpoints`: the checkpoint and resume tests' model, callbacks and worker runs.
- `workers/`: scripts the tests launch in subprocesses (run by file path, never imported).
"""
