#!/bin/bash
# Train the same tiny runs (CMhybrid, O2CAP, CMhard + camera-aware proxies) under an earlier commit and under this
# checkout, and say whether their final weights are bit-identical: a refactor that claims to change no number is
# checked this way.   benchmarks/numerics_unchanged.sh 15edc0b
REV=${1:?usage: benchmarks/numerics_unchanged.sh COMMIT}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
WORK=$(mktemp -d /tmp/hhcl-numerics-XXXX)
git -C "$ROOT" worktree add -f --detach "$WORK/old" "$REV" -q || exit 1
trap 'git -C "$ROOT" worktree remove --force "$WORK/old"; rm -rf "$WORK"' EXIT
COMMON=(--set data.num_instances=4 --set optim.step_size=12 --set train.epochs=2 --set train.iters=4
        --set train.eval_every=2 --set train.device=cpu --set data.batch_size=16 --set model.bn_group=8
        --set cluster.k1=8 --set cluster.k2=3 --set cluster.eps=0.7 --set cluster.min_samples=3
        --set data.height=64 --set data.width=32)
declare -A MODES=([CMhybrid]="--set memory.mode=CMhybrid"
                  [O2CAP]="--set memory.mode=O2CAP --set memory.temp=0.07 --set memory.momentum=0.2 --set memory.bg_knn=5"
                  [CMhard-cam]="--set memory.mode=CMhard --set memory.camera_aware=true --set memory.bg_knn=5")
for code in old new; do
  src=$([ $code = old ] && echo "$WORK/old" || echo "$ROOT")
  PYTHONPATH=$src $PY -m hhcl prepare synthetic --ids 16 --cams 3 --seed 3 --height 64 --width 32 \
    --root "$WORK/$code-data" --no-progress > /dev/null || exit 1
  for name in "${!MODES[@]}"; do
    # shellcheck disable=SC2086
    PYTHONPATH=$src $PY -m hhcl train --preset demo --root "$WORK/$code-data" --runs-dir "$WORK/$code-runs" \
      --name "$name" "${COMMON[@]}" ${MODES[$name]} > "$WORK/$code-$name.log" 2>&1 \
      || { echo "$code $name failed:"; tail -5 "$WORK/$code-$name.log"; exit 1; }
  done
done
WORK=$WORK $PY - <<'PY'
import os
import torch
from safetensors.torch import load_file
work = os.environ["WORK"]
for name in ("CMhybrid", "O2CAP", "CMhard-cam"):
    a, b = (load_file(f"{work}/{c}-runs/{name}/checkpoints/last.safetensors") for c in ("old", "new"))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"{name}: {'bit-identical' if same else 'DIFFERENT'} ({len(a)} tensors)")
PY
