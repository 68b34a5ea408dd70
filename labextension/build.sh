#!/usr/bin/env bash
# Build the JupyterLab extension into jupyter_hpc/labextension (prebuilt,
# shipped in the wheel under share/jupyter/labextensions/jupyter-hpc).
#
#   labextension/build.sh            build unless sources and lockfile are unchanged
#   labextension/build.sh --force    always build
#
# Environment:
#   JUPYTER_HPC_PYTHON  Python that has `jupyterlab` installed (default: the
#                       testbed venv /opt/jupyter-hpc/venv, else python3)
#   NPM                 npm client to use (default: npm)
#
# Only the npm registry is used (npm ci from package-lock.json).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="$ROOT/jupyter_hpc/labextension"
STAMP="$OUT/.build-stamp"
NPM="${NPM:-npm}"
FORCE=0
LAB_VERSION='import importlib.metadata as m; print(m.version("jupyterlab"))'
[[ "${1:-}" == "--force" ]] && FORCE=1

if [[ -n "${JUPYTER_HPC_PYTHON:-}" ]]; then
  PY="$JUPYTER_HPC_PYTHON"
elif [[ -x /opt/jupyter-hpc/venv/bin/python ]] && [[ -n "$(/opt/jupyter-hpc/venv/bin/python -c "$LAB_VERSION" 2>/dev/null)" ]]; then
  PY=/opt/jupyter-hpc/venv/bin/python
else
  PY="$(command -v python3)"
fi

cd "$HERE"

# Hash of everything that goes into the build.
hash_sources() {
  {
    find src schema style -type f | LC_ALL=C sort | xargs sha256sum
    sha256sum package.json package-lock.json tsconfig.json install.json build.sh
    "$PY" -c "$LAB_VERSION" 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

HASH="$(hash_sources)"
if [[ $FORCE -eq 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" \
      && -f "$OUT/package.json" && -d "$OUT/static" ]]; then
  echo "labextension: up to date ($OUT)"
  exit 0
fi

if ! command -v node >/dev/null; then
  echo "labextension: Node.js is needed to build the extension (apt-get install nodejs npm)" >&2
  exit 1
fi
if ! "$PY" -c 'import jupyterlab' 2>/dev/null; then
  echo "labextension: $PY has no jupyterlab; set JUPYTER_HPC_PYTHON to a Python with jupyterlab>=4" >&2
  exit 1
fi

start=$(date +%s)
# Install dependencies when the lockfile changed since the last install.
LOCK_HASH="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f node_modules/.lock-hash || "$(cat node_modules/.lock-hash)" != "$LOCK_HASH" ]]; then
  echo "labextension: installing npm dependencies"
  "$NPM" ci --no-audit --no-fund --loglevel=error
  echo "$LOCK_HASH" > node_modules/.lock-hash
fi

echo "labextension: compiling TypeScript"
node_modules/.bin/tsc --sourceMap

echo "labextension: building with $PY ($("$PY" -c 'import jupyterlab; print("jupyterlab", jupyterlab.__version__)'))"
CORE_PATH="$("$PY" -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')"
rm -rf "$OUT"
# Same as `jupyter labextension build`, without depending on which build
# front end (jupyterlab or jupyter-builder) the installed jupyterlab uses.
node node_modules/@jupyterlab/builder/lib/build-labextension.js --core-path "$CORE_PATH" "$HERE"

# Lets `jupyter labextension list` name the Python package that ships it.
cp install.json "$OUT/install.json"

echo "$HASH" > "$STAMP"
echo "labextension: built $OUT in $(( $(date +%s) - start ))s"
