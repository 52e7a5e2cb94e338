#!/bin/bash
# Does DiffAugment (and LeCam) help on little data, here, on CPU? Trains the demo's model
# (scripts/launch_demo.sh) on 10% of S32 (--num_samples 5000) three times, for the same number
# of iterations and from the same seed: without augmentation, with --DiffAugment
# translation,cutout, and with that plus --LC 0.3; then compares G_ema's samples by
#  (a) FID against S32's moments under a tf_fid Inception with seeded random weights
#      (comparable only among these runs), and
#  (b) the accuracy with which a small classifier trained on real S32 recognises the class
#      G_ema was asked for (its accuracy on held-out real images is reported beside it).
# Everything lands in $OUT (data, weights, logs, samples, table.md); docs/little_data.md holds
# a table this wrote.
#
#   PYTHON=.venv/bin/python bash scripts/data_efficient/compare_s32.sh
#   TOTAL_ITRS=100 FID_IMAGES=200 REAL_IMAGES=200 ACC_IMAGES=500 bash ...  # a smoke test
set -euo pipefail

PYTHON=${PYTHON:-python}
OUT=${OUT:-compare_s32}
TOTAL_ITRS=${TOTAL_ITRS:-3000}
REAL_IMAGES=${REAL_IMAGES:-3000}   # images of the full set in the FID reference moments
FID_IMAGES=${FID_IMAGES:-1500}     # G_ema samples per FID
ACC_IMAGES=${ACC_IMAGES:-10000}    # G_ema samples per classifier accuracy
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

# The demo's model and optimiser (see launch_demo.sh) at batch 16, the batch its recorded
# figures (docs/little_data.md) were measured with; every root under $OUT.
MODEL_FLAGS=(
  --dataset S32
  --data_root "$OUT/data" --weights_root "$OUT/weights" --logs_root "$OUT/logs"
  --samples_root "$OUT/samples"
  --G_ch 8 --D_ch 8 --G_attn 0 --D_attn 0
  --G_shared --shared_dim 32 --hier --dim_z 64
  --batch_size 16 --channels_last
  --ema --use_ema --ema_decay 0.99 --ema_start 100
  --seed 0
)
TRAIN_FLAGS=(
  --num_samples 5000
  --num_epochs 1000 --shuffle --num_workers 0 --no_pin_memory
  --num_D_steps 1 --G_lr 5e-4 --D_lr 5e-4 --G_B1 0.5 --D_B1 0.5
  --G_init ortho --D_init ortho --total_itrs "$TOTAL_ITRS"
  --save_every 1000 --num_save_copies 0 --test_every 0 --sv_log_interval 0
)
INCEPTION="$OUT/inception_tf_fid_random.pth"
mkdir -p "$OUT/logs"
start=$(date +%s)

# S32 (generated on first use), the random Inception's weights and the classifier.
OMP_NUM_THREADS=1 "$PYTHON" tools/compare_s32.py --step prepare "${MODEL_FLAGS[@]}" --out "$OUT"

# Then, side by side with one thread each (small models gain nothing from more, and on a
# shared machine waiting threads cost more than they give): the reference moments, from a
# seeded random $REAL_IMAGES of all 50,000 S32 images (--seed 1: not the training subset that
# --seed 0 picks), and the three runs. Their output goes to $OUT/logs/*.out.
pids=()
OMP_NUM_THREADS=1 "$PYTHON" calculate_inception_moments.py --dataset S32 --data_root "$OUT/data" \
  --inception_backend tf_fid --inception_weights "$INCEPTION" \
  --num_samples "$REAL_IMAGES" --seed 1 --batch_size 50 --num_workers 0 --kid_feats 0 \
  --device cpu > "$OUT/logs/moments.out" 2>&1 &
pids+=($!)
runs=()
for run in plain DiffAugment DiffAugment_LC; do
  case $run in
    plain) extra=() ;;
    DiffAugment) extra=(--DiffAugment translation,cutout) ;;
    DiffAugment_LC) extra=(--DiffAugment translation,cutout --LC 0.3) ;;
  esac
  OMP_NUM_THREADS=1 "$PYTHON" train.py "${MODEL_FLAGS[@]}" "${TRAIN_FLAGS[@]}" \
    --experiment_name "s32_10pc_$run" ${extra[@]+"${extra[@]}"} \
    > "$OUT/logs/s32_10pc_$run.out" 2>&1 &
  pids+=($!)
  runs+=("s32_10pc_$run")
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "a job failed: see $OUT/logs/*.out" >&2; exit 1; }
done
echo "moments and training took $(( $(date +%s) - start ))s"

OMP_NUM_THREADS=${EVAL_THREADS:-2} "$PYTHON" tools/compare_s32.py --step evaluate \
  "${MODEL_FLAGS[@]}" --out "$OUT" --runs "$(IFS=,; echo "${runs[*]}")" \
  --fid_images "$FID_IMAGES" --acc_images "$ACC_IMAGES"
echo "compare_s32 took $(( $(date +%s) - start ))s in all (TOTAL_ITRS=$TOTAL_ITRS)"
