#!/usr/bin/env bash
# Issue 13's ablation on one GPU box, without Ray (`tuner.run --backend local`): ablate_ebm at the
# `fair` preset on digits (16 px) and textures (native 32 px), 3 seeds each, the two runs side by
# side on one GPU, each under a time limit, so whatever trials finish are kept (parts are written
# whole). First the training-path timings that back trainables.ebm.training_forward's choice.
#
#   OUT=/some/folder LIMIT_S=480 NOISETUNE_GIT_COMMIT=$(git rev-parse --short HEAD) bash bench/ebm_ablation_gpu.sh
#   DATASETS=textures WORKERS=2 STORE=/copy/of/docs/ebm-ablation-fair ... bash bench/ebm_ablation_gpu.sh
#
# Table 1's n = 10^4 at the paper's placement, in run folders of their own (SUFFIX; the override
# changes every trial key, so these never mix with the n <= 1000 folders):
#   DATASETS=textures WORKERS=2 SUFFIX=-n10k EXTRA="--set n_checkpoints=1,10,100,1000,10000 \
#     --only placement_train=full,output_activation=sigmoid" ... bash bench/ebm_ablation_gpu.sh
#
# Writes to $OUT: gpu.txt, ebm_training_paths.txt, digits.log, textures.log, results.tgz (both runs'
# Parquet folders; `python -m analysis.report` reads them).
set -u
OUT=${OUT:-bench/results/gpu}
LIMIT_S=${LIMIT_S:-480}
WORKERS=${WORKERS:-1}
STORE=${STORE:-/tmp/noisetune-results}
SEEDS=${SEEDS:-3}
SUFFIX=${SUFFIX:-}  # appended to the run names
# Which runs: "digits textures" (side by side), or one of them. On an H200 two processes are as fast
# in aggregate as twelve (about 25 s per trial, bench/README.md), so one run uses WORKERS=2.
DATASETS=${DATASETS:-digits textures}
read -r -a EXTRA <<< "${EXTRA:-}"  # more tuner.run arguments, e.g. "--set steps=6" for a dry run on a CPU
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$STORE"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], torch.cuda.get_device_name())"
  nproc; } > "$OUT/gpu.txt" 2>&1
timeout 60 python3 bench/ebm_training_paths.py --device cuda --out "$OUT/ebm_training_paths.txt" > /dev/null 2>&1 \
  || echo "training-path bench failed or ran out of time" >> "$OUT/gpu.txt"
start=$(date +%s)
common=(--preset fair --backend local --workers "$WORKERS" --seeds "$SEEDS" --storage "$STORE" --set memory_mb=4096
        "${EXTRA[@]}")
groups=()  # timeout leads a process group of its own, so the group holds exactly this run's processes
launch() {  # launch DATASET NAME [tuner.run arguments]: one run in the background, if DATASETS names it
  case " $DATASETS " in *" $1 "*) ;; *) return ;; esac
  timeout -k 5 "$LIMIT_S" python3 -m tuner.run ablate_ebm "${common[@]}" --name "$2" "${@:3}" > "$OUT/$1.log" 2>&1 &
  groups+=($!)
}
launch digits "ablate_ebm-fair-digits16$SUFFIX"
launch textures "ablate_ebm-fair-textures32$SUFFIX" --dataset textures --set image_size=32 --set test_limit=300
wait
for g in "${groups[@]}"; do kill -9 -- "-$g" 2>/dev/null; done  # workers left by a driver stopped at its limit
echo "ablation wall time $(( $(date +%s) - start )) s (limit ${LIMIT_S} s per run)" >> "$OUT/gpu.txt"
nvidia-smi --query-gpu=memory.used --format=csv >> "$OUT/gpu.txt" 2>&1
tar czf "$OUT/results.tgz" -C "$STORE" .
