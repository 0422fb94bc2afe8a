#!/usr/bin/env bash
# Makes one node of a cluster ready for autoresearch: a Python environment in ~/venv with the
# Makefile's torch, the Ray that `ray up` runs, and this project (copied to ~/autoresearch by the
# cluster config's file_mounts), on the PATH of every shell Ray opens there. `ray up` runs it on
# every node, for cluster.yaml and cluster.local.yaml alike.
#
# When ~/venv already satisfies all of that (a second `ray up`, or a machine prepared by hand) it
# installs nothing and takes about a second; pyproject.toml's dependencies are checked too, so a
# dependency added there is installed at the next `ray up`.
set -euo pipefail

RAY_VERSION=2.60.0   # every node runs the same Ray as the machine that runs `ray up`
TORCH_VERSION=2.13.0 # as in the Makefile: the CUDA build from the registry on a GPU node
PROJECT=$HOME/autoresearch
VENV=$HOME/venv
UV=$HOME/.local/bin/uv

# Exit status 0 when the environment has the pinned Ray and torch, and this project with every
# dependency of its pyproject.toml.
ready() {
    "$VENV/bin/python" - "$RAY_VERSION" "$TORCH_VERSION" "$PROJECT/pyproject.toml" <<'PY'
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

ray_version, torch_version, pyproject = sys.argv[1:]
with open(pyproject, "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
wanted = [Requirement(f"ray=={ray_version}"), Requirement(f"torch=={torch_version}"),
          Requirement("autoresearch"), *map(Requirement, dependencies)]
sys.exit(not all(need.specifier.contains(version(need.name), prereleases=True)
                 for need in wanted))
PY
}

if ready 2>/dev/null; then
    echo "setup_node: $VENV already has Ray $RAY_VERSION, torch $TORCH_VERSION and autoresearch"
else
    # One Python (3.11, from uv, whatever the machine ships), then torch first, so that the
    # project's torch range keeps it, then Ray and this project.
    test -x "$UV" || curl -LsSf https://astral.sh/uv/install.sh | sh
    test -x "$VENV/bin/python" || "$UV" venv --python 3.11 "$VENV"
    "$UV" pip install --python "$VENV/bin/python" "torch==$TORCH_VERSION"
    "$UV" pip install --python "$VENV/bin/python" "ray[default,tune]==$RAY_VERSION" -e "$PROJECT"
    ready
fi

# Ray runs its commands (`ray start`, `ray exec ...`) in `bash -i`, which reads ~/.bashrc. Every
# one of them finds this environment, and connects to the cluster with its token: without
# RAY_AUTH_MODE=token a client sends none, and `ray status` or `autoresearch ... --address auto`
# is refused.
grep -qs 'venv/bin' ~/.bashrc || echo 'export PATH=$HOME/venv/bin:$PATH' >> ~/.bashrc
grep -qs 'RAY_AUTH_MODE' ~/.bashrc || echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc
