#!/usr/bin/env bash
# Issue 9's multi-GPU check: one process per GPU under torchrun over NCCL (2 if the machine has 2 or more GPUs,
# else 1, said so), each on cuda:LOCAL_RANK; metrics reduced on the GPU; fused vs materialised loss in fp32;
# bf16 autocast; a few RL steps of the tiny policy through the trainer; DDP parameters identical across ranks.
# Then issue 16's generation check (bench/gpu_generation.py): a MusicGen-small-sized decoder in bf16 at batch
# 1, 16 and 64, and at batch 1 the fraction of the weight-bandwidth bound. Then issue 17's scoring bench
# (bench/reward_throughput.py on the GPU): each reward batched against one clip at a time.
# Prints PASS/FAIL lines and exits non-zero if any check fails. Takes 2-3 minutes once Python is ready.
#
#   bash bench/gpu_check.sh              # from anywhere; runs in the repository root
#   GPU_CHECK_BENCH=1 bash bench/gpu_check.sh   # then also bench/rl_throughput.py on the GPU (mid size, ~2 min)
#   GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh # the same checks on CPUs over gloo (tests this script)
#
# Python: $VENV (default .venv) if its torch sees CUDA; else a venv in .venv-gpu built as `make setup` builds
# .venv (torch at the Makefile's version first, then the package under constraints.txt), reusing a CUDA torch
# already installed in the system Python when there is one (no download of torch then).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"
TORCH_VERSION="$(sed -n 's/^TORCH_VERSION := //p' Makefile)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
fail() { echo "FAIL setup: $*"; exit 2; }

cuda_python() {  # does "$1" import torch with working CUDA (or, for a dry run, import torch at all)?
  [ -x "$1" ] || return 1
  if [ "$DRY_RUN" = 1 ]; then "$1" -c 'import torch, transformers' 2>/dev/null; return; fi
  "$1" -c 'import sys, torch, transformers; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}

PY="${VENV:-.venv}/bin/python"
if ! cuda_python "$PY"; then
  VENV_GPU=.venv-gpu
  PY="$VENV_GPU/bin/python"
  if ! cuda_python "$PY"; then
    echo "setup: building $VENV_GPU (torch $TORCH_VERSION, then the package under constraints.txt)"
    if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      python3 -m venv --system-site-packages "$VENV_GPU" || fail "python3 -m venv failed"
      echo "setup: reusing the system Python's CUDA torch $(python3 -c 'import torch; print(torch.__version__)')"
    else
      python3 -m venv "$VENV_GPU" || fail "python3 -m venv failed"
      "$PY" -m pip install --quiet --upgrade pip
      # torch first, by version: on Linux PyPI's torch==X is the CUDA build
      "$PY" -m pip install --quiet "torch==$TORCH_VERSION" || fail "pip install torch==$TORCH_VERSION failed"
    fi
    "$PY" -m pip install --quiet -c constraints.txt -e . || fail "pip install -e . failed"
    cuda_python "$PY" || fail "$PY: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no GPU"
  fi
fi
echo "python: $PY, torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"

if [ "$DRY_RUN" = 1 ]; then
  NPROC=2
  echo "dry run: 2 CPU processes over gloo"
else
  GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
  nvidia-smi -L 2>/dev/null || true
  if [ "$GPUS" -ge 2 ]; then
    NPROC=2
  else
    NPROC=1
    echo "NOTE: $GPUS GPU on this machine: 1 process (a one-rank NCCL group); the cross-rank DDP checks need 2 GPUs"
  fi
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
status=0
timeout 300 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" bench/gpu_check.py "$OUT" \
  || { echo "FAIL torchrun: exit status $? (a rank failed a check, crashed, or ran past 300 s)"; status=1; }
"$PY" bench/gpu_check.py --summarise "$OUT" "$NPROC" || status=1

GENERATION_ARGS=()
[ "$DRY_RUN" = 1 ] && GENERATION_ARGS=(--dry-run)
timeout 300 "$PY" bench/gpu_generation.py "${GENERATION_ARGS[@]}" \
  || { echo "FAIL generation: bench/gpu_generation.py exit status $? (crashed, or ran past 300 s)"; status=1; }

SCORING_ARGS=(--device cuda)
[ "$DRY_RUN" = 1 ] && SCORING_ARGS=(--device cpu --clips 2 --seconds 1)
timeout 300 "$PY" bench/reward_throughput.py "${SCORING_ARGS[@]}" \
  || { echo "FAIL scoring: bench/reward_throughput.py exit status $? (crashed, or ran past 300 s)"; status=1; }

if [ "${GPU_CHECK_BENCH:-0}" = 1 ] && [ "$DRY_RUN" != 1 ]; then
  timeout 300 "$PY" bench/rl_throughput.py --device cuda --sizes mid --steps 3 --rounds 1 \
    || { echo "FAIL bench: bench/rl_throughput.py exit status $?"; status=1; }
fi
[ "$status" = 0 ] && echo "PASS gpu_check: every check passed" || echo "FAIL gpu_check: see the FAIL lines above"
exit "$status"
