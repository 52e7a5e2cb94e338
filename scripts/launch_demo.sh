#!/bin/bash
# Demo: train a small class-conditional BigGAN on the built-in S32 shapes dataset (32x32 RGB,
# 10 classes; generated and cached under data/S32 on first use) in under 15 minutes on a
# 2-core CPU, then draw sample sheets from its checkpoint with sample.py.
#
#   PYTHON=.venv/bin/python bash scripts/launch_demo.sh          # from the repo root
#   TOTAL_ITRS=400 bash scripts/launch_demo.sh --seed 1            # extra flags reach both
#
# Training stops after TOTAL_ITRS iterations or, on a slow or busy machine, when `timeout`
# sends SIGINT after TRAIN_SECONDS: train.py then finishes the iteration and writes a final
# checkpoint and sheets. The last class sheet (one row per class) is
# samples/$EXPERIMENT/<itr>/samples0.jpg, beside fixed_samples<itr>.jpg.
set -euo pipefail

. "$(dirname -- "${BASH_SOURCE[0]}")/utils/launch_common.sh"

PYTHON=${PYTHON:-python}
TOTAL_ITRS=${TOTAL_ITRS:-1500}       # ~480 s on a quiet 2-core CPU (docs/benchmarks.md#a-fresh-clone)
TRAIN_SECONDS=${TRAIN_SECONDS:-750}  # cap; leaves time for start-up and sample.py
SAVE_EVERY=${SAVE_EVERY:-200}
EXPERIMENT=${EXPERIMENT:-s32_demo}
# Two cores, often shared: idle OpenMP threads should sleep, not spin.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
check_count TOTAL_ITRS iterations
check_count TRAIN_SECONDS seconds
# A run without saves leaves nothing to sample: SAVE_EVERY must be a positive count.
check_count SAVE_EVERY 'iterations (the sheets are drawn from the last checkpoint)'
check_python

# Model flags, shared by train.py and sample.py so the checkpoint loads. G_ch/D_ch 8 (32
# channels at every stage): 16 is ~3x slower per step here. Batch 32: 1.6x batch 16's time
# per step, and in the same time its samples vary more and it learns the checkerboard class,
# which batch 16 never draws (docs/benchmarks.md#demo-variety). float32 with channels_last:
# on CPUs without bf16 instructions (AVX2 only) --amp bf16 is several times slower.
MODEL_FLAGS=(
  --dataset S32 --experiment_name "$EXPERIMENT"
  --data_root data --weights_root weights --logs_root logs --samples_root samples
  --G_ch 8 --D_ch 8 --G_attn 0 --D_attn 0
  --G_shared --shared_dim 32 --hier --dim_z 64
  --batch_size 32 --channels_last
  --ema --use_ema --ema_decay 0.99 --ema_start 100
  --seed 0
)
TRAIN_FLAGS=(
  --num_epochs 100 --shuffle --num_workers 0 --no_pin_memory
  --num_D_steps 1 --G_lr 5e-4 --D_lr 5e-4 --G_B1 0.5 --D_B1 0.5
  # D sees real and fake shifted alike: at 1.03x the step's time every class is drawn at 96% or
  # more, with wider centroid spreads (docs/benchmarks.md#demo-variety)
  --DiffAugment translation
  --G_init ortho --D_init ortho --total_itrs "$TOTAL_ITRS"
  --save_every "$SAVE_EVERY" --num_save_copies 0 --test_every 0 --sv_log_interval 0
  --collapse_watch  # one line if the run collapses; keeps the last healthy set (docs/collapse.md)
)

train_capped "$(root_of weights weights "$@")/$(last_flag --experiment_name "$EXPERIMENT" "$@")" \
  "$PYTHON" train.py "${MODEL_FLAGS[@]}" "${TRAIN_FLAGS[@]}" "$@"

# "$@" follows the model flags here as for train.py, so an override (e.g. --G_ch 16) reaches
# both and the checkpoint still matches.
"$PYTHON" sample.py "${MODEL_FLAGS[@]}" --sample_sheets --sample_random "$@"
# Where the commands wrote: extra flags override the script's samples root and name.
SAMPLES=$(root_of samples samples "$@")/$(last_flag --experiment_name "$EXPERIMENT" "$@")
last=$(ls -d "$SAMPLES"/[0-9]* | awk -F/ '{print $NF "\t" $0}' | sort -n | tail -n 1 | cut -f2)
echo "last class sheet: $last/samples0.jpg (sample.py's: $SAMPLES/-1/samples0.jpg)"
