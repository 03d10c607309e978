#!/usr/bin/env bash
# Smoke test of a built wheel, used as a user would use it: installed (not editable) into a
# fresh virtual environment and run from a temporary folder, so the checkout is not importable.
#
#     python -m build --outdir /tmp/dist && bash scripts/wheel_smoke.sh /tmp/dist/callbacks_kit-*.whl
#
# Checks, in this order (the first failure ends the script with a non-zero status):
#   1. the package imports from the virtual environment, every name in callbacks_kit.__all__
#      and every installed module imports, the version is the distribution's, and py.typed
#      and LICENSE are files of the installed distribution;
#   2. every .py file under callbacks_kit/ in the checkout is in the wheel (a subpackage
#      without __init__.py is silently left out of it);
#   3. `callbacks-kit train`: one tiny epoch on the built-in shapes, on the CPU;
#   4. `callbacks-kit inspect` on that run: the run holds its scalars, and a checkpoint exists.
#
# Environment: PYTHON (python3) makes the virtual environment; SOURCE (the checkout this
# script is in; empty to skip check 2) is the tree the wheel was built from; KEEP=1 keeps the
# temporary folder. Dependencies come from the registry (pip's cache makes a second install
# fast); pip reads PIP_CONSTRAINT, so .ci/run pins them to the versions the tests ran with.
set -euo pipefail

if [[ $# -ne 1 || ! -f $1 || $1 != *.whl ]]; then
    echo "usage: bash scripts/wheel_smoke.sh path/to/callbacks_kit-<version>-py3-none-any.whl" >&2
    exit 2
fi
wheel=$(realpath "$1")
here=$(cd "$(dirname "$0")/.." && pwd)
export SOURCE=${SOURCE-$here}
if [[ -n $SOURCE ]]; then SOURCE=$(realpath "$SOURCE"); fi
python=${PYTHON:-python3}

tmp=$(mktemp -d -t wheel-smoke.XXXXXX)
cleanup() {
    local status=$?
    if [[ ${KEEP:-0} == 1 ]]; then echo "wheel_smoke: kept $tmp"; else rm -rf "$tmp"; fi
    if [[ $status -ne 0 ]]; then echo "wheel_smoke: FAILED (status $status)" >&2; fi
}
trap cleanup EXIT

step() {
    echo "--- wheel_smoke: $*"
}

step "install $(basename "$wheel") into a fresh virtual environment"
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --progress-bar off "$wheel"
export PATH="$tmp/venv/bin:$PATH"
unset PYTHONPATH PYTHONHOME
mkdir "$tmp/work"
cd "$tmp/work"  # nothing of the checkout is importable from here

step "imports, version, py.typed and LICENSE in the installed distribution"
python - <<'EOF'
import importlib
import importlib.metadata as md
import pkgutil
import sysconfig
from pathlib import Path

import callbacks_kit

site = Path(sysconfig.get_paths()["purelib"]).resolve()
where = Path(callbacks_kit.__file__).resolve()
assert where.is_relative_to(site), f"callbacks_kit was imported from {where}, not from the virtual environment"
missing = [name for name in callbacks_kit.__all__ if not hasattr(callbacks_kit, name)]
assert not missing, f"callbacks_kit.__all__ names what the package does not define: {missing}"
for name in callbacks_kit.__all__:
    exec(f"from callbacks_kit import {name}")
modules = [m.name for m in pkgutil.walk_packages(callbacks_kit.__path__, "callbacks_kit.")]
modules = [name for name in modules if not name.endswith(".__main__")]  # __main__ would run the CLI
for module in modules:
    importlib.import_module(module)

dist = md.distribution("callbacks-kit")
assert dist.version == callbacks_kit.__version__, f"version {dist.version} != __version__ {callbacks_kit.__version__}"
files = {str(f).replace("\\", "/"): f for f in dist.files or []}
assert "callbacks_kit/py.typed" in files, "callbacks_kit/py.typed is not in the installed distribution"
assert Path(dist.locate_file(files["callbacks_kit/py.typed"])).is_file()
licences = [f for name, f in files.items() if ".dist-info/" in name and name.rsplit("/", 1)[1] == "LICENSE"]
assert licences, f"no LICENSE in the installed dist-info: {sorted(n for n in files if '.dist-info/' in n)}"
text = Path(dist.locate_file(licences[0])).read_text()
assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text, (
    "the installed LICENSE is not the Apache-2.0 text"
)
assert "LICENSE" in (dist.metadata.get_all("License-File") or []), "METADATA names no License-File: LICENSE"
print(
    f"callbacks-kit {dist.version} from {where.parent}: {len(callbacks_kit.__all__)} public names, "
    f"{len(modules)} modules imported; py.typed and {licences[0]} installed"
)
EOF

if [[ -n $SOURCE ]]; then
    step "every module of $SOURCE/callbacks_kit is in the wheel"
    python - "$wheel" <<'EOF'
import os
import sys
import zipfile
from pathlib import Path

source = Path(os.environ["SOURCE"])
in_tree = {p.relative_to(source).as_posix() for p in (source / "callbacks_kit").rglob("*.py")}
in_wheel = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = sorted(in_tree - in_wheel)
if missing:
    sys.exit(
        "files of the source tree missing from the wheel (a package folder without __init__.py?):\n  "
        + "\n  ".join(missing)
    )
print(f"{len(in_tree)} .py files of the source tree, all in the wheel")
EOF
fi

step "callbacks-kit train: one tiny epoch on the built-in shapes"
python -m callbacks_kit --help >/dev/null
# Its whole output (with the model summary) is shown only when it fails.
callbacks-kit train --cpu --epochs 1 --train-samples 64 --val-samples 32 --image-size 32 --batch-size 32 \
    --workers 0 --log-every 1 --no-progress --log-dir "$tmp/run" >"$tmp/train.txt" 2>&1 \
    || { cat "$tmp/train.txt"; exit 1; }
grep -E "^(training|epoch|done) " "$tmp/train.txt"

step "callbacks-kit inspect on its run"
callbacks-kit inspect "$tmp/run" >"$tmp/inspect.txt" || { cat "$tmp/inspect.txt"; exit 1; }
grep -E "^  [a-z_]+:" "$tmp/inspect.txt"  # one line per plugin: how many tags
# Each split's scalars are in its sub-run ([train], [validation]) under the same tag.
for split_tag in train:loss/step validation:loss validation:accuracy; do
    split=${split_tag%%:*} tag=${split_tag#*:}
    sed -n "/^\[$split\]/,/^\[/p" "$tmp/inspect.txt" | grep -q "^    $tag: " \
        || { echo "wheel_smoke: no $tag scalar in the run's $split sub-run" >&2; exit 1; }
done
[[ -s $tmp/run/checkpoints/last.json ]] || { echo "wheel_smoke: no checkpoint in $tmp/run/checkpoints" >&2; exit 1; }

echo "wheel_smoke: OK"
