#!/usr/bin/env bash
# Installs (once) the libtorch that tch 0.24 builds against — torch 2.11.0 from PyPI — plus the pinned
# Python oracle libraries of tools/requirements-test.txt, into a venv in a cache directory outside the repo,
# then prints the environment cargo needs as `export` lines (eval them, or use tools/with-torch).
#
#   FERROTUNE_TORCH_HOME   venv location (default ~/.cache/ferrotune/torch-2.11.0)
#   FERROTUNE_PYTHON       interpreter used to create the venv (default python3)
#
# Idempotent: a marker holding the hash of the requirements file makes a second run a few stat calls.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
req="$here/requirements-test.txt"
home=${FERROTUNE_TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrotune/torch-2.11.0}
marker="$home/.ferrotune-installed"
want=$(sha256sum "$req" | cut -c1-16)

if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "$want" ]; then
  echo "ferrotune: installing torch 2.11.0 and the test oracles into $home (once; ~5 GB)" >&2
  mkdir -p "$(dirname "$home")"
  if [ ! -x "$home/bin/python" ]; then
    "${FERROTUNE_PYTHON:-python3}" -m venv "$home" >&2
  fi
  "$home/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$home/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
  site=$("$home/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  # cudarc looks for libnccl.so; the wheel ships only libnccl.so.2 (see NOTES). Give it the plain name.
  nccl=$(dirname "$site")/nvidia/nccl/lib
  if [ -f "$nccl/libnccl.so.2" ] && [ ! -e "$home/lib/libnccl.so" ]; then
    mkdir -p "$home/lib" && ln -sf "$nccl/libnccl.so.2" "$home/lib/libnccl.so"
  fi
  echo "$site" > "$home/.torch-dir"
  echo "$want" > "$marker.tmp" && mv "$marker.tmp" "$marker"
fi

torch=$(cat "$home/.torch-dir")
cat <<ENV
export FERROTUNE_TORCH_HOME='$home'
export FERROTUNE_PYTHON='$home/bin/python'
export LIBTORCH='$torch'
export LIBTORCH_INCLUDE='$torch'
export LIBTORCH_LIB='$torch'
export LIBTORCH_CXX11_ABI=1
export FERROTUNE_EXTRA_LIB='$home/lib'
ENV
