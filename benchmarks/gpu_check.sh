#!/usr/bin/env bash
# One prepared check of the accelerator code paths and the training figures (issue 17).
#
#   benchmarks/gpu_check.sh --out DIR              # on a GPU machine, offline, <= 8 minutes
#   benchmarks/gpu_check.sh --dry-run --out DIR    # on a CPU: every phase at tiny sizes
#
# Before copying the repository to an offline GPU machine, run (with network access)
#   python benchmarks/fetch_gpu_wheels.py
# which puts the wheels the check needs into benchmarks/wheels/ (git-ignored). Here, each
# wheel whose distribution the machine's Python lacks is installed into a temporary folder
# put on PYTHONPATH; the machine's own packages (its CUDA torch above all) are never
# replaced. Then benchmarks/gpu_check.py runs the phases and writes DIR/gpu_check.json,
# DIR/summary.txt and DIR/log.txt. Exit status: 0 all passed, 1 a phase or a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
trap 'rm -rf "$site"' EXIT
missing=()
for wheel in benchmarks/wheels/*.whl; do
    [ -e "$wheel" ] || continue
    dist=$(basename "$wheel" | cut -d- -f1)
    if ! "$PY" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" \
            2>/dev/null; then
        missing+=("$wheel")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "gpu_check: installing ${#missing[@]} carried wheel(s) into $site"
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
        --target "$site" "${missing[@]}"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" benchmarks/gpu_check.py "$@"
