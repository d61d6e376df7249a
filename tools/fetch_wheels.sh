#!/usr/bin/env bash
# Download the wheels a GPU machine's image lacks (hydra-core, omegaconf, antlr4-python3-runtime; the image
# has torch, lightning, numpy, pillow, PyYAML and packaging) into .whl/, at the versions of constraints.txt,
# for Python 3.12 there. All three are pure Python. antlr4-python3-runtime 4.9.3 is published only as an
# sdist, so its wheel is built here (pip wheel --no-deps), which any Python 3 can do.
#
# usage: bash tools/fetch_wheels.sh [DEST]     (DEST defaults to .whl; keep it out of git:
#        echo /.whl/ >> .git/info/exclude)
# On the GPU machine, with .whl carried:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/src
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
PY=${PYTHON:-python3}
version() {
  local line
  line=$(grep -i "^$1==" constraints.txt) || { echo "constraints.txt pins no version of $1" >&2; exit 1; }
  echo "${line#*==}"
}
hydra=$(version hydra-core)
omegaconf=$(version omegaconf)
antlr=$(version antlr4-python3-runtime)
mkdir -p "$dest"
rm -f "$dest"/hydra_core-*.whl "$dest"/omegaconf-*.whl "$dest"/antlr4_python3_runtime-*.whl  # one version of each
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" "hydra-core==$hydra" "omegaconf==$omegaconf"
"$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$dest" "antlr4-python3-runtime==$antlr"

# the set installs on its own, as on the GPU machine
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$dest"/*.whl
PYTHONPATH=$site "$PY" -c "import antlr4, hydra, omegaconf; print('installs: hydra', hydra.__version__, 'omegaconf', omegaconf.__version__)"
ls -l "$dest"/*.whl
du -cb "$dest"/*.whl | tail -1 | awk '{printf "total %d bytes (%.2f MiB)\n", $1, $1 / 1048576}'
