#!/bin/bash
# Your own images to samples in one command: class histogram -> HDF5 file -> Inception moments
# (when the Inception weights are on this machine) -> training with the demo's model and
# budget -> sample sheets.
#
#   PYTHON=.venv/bin/python bash scripts/launch_own_data.sh my_images            # repo root
#   RESOLUTION=64 TRAIN_SECONDS=3600 bash scripts/launch_own_data.sh my_images --G_lr 2e-4
#
# FOLDER is FOLDER/<class>/<image> (any size: centre-cropped and resized; grayscale and palette
# images become RGB). A folder of images without class subfolders is trained as one class;
# train.py itself refuses such a folder, so this script gives the data path a view of it, one
# symlinked class folder under $DATA_ROOT/${NAME}_1class. A folder that cannot train is refused
# with one line by the data path's own checks (the layout, a class of fewer than two images,
# unreadable images), before training.
#
# Extra flags reach train.py and sample.py, after this script's, as in launch_demo.sh: an
# override (e.g. --G_ch 16) reaches both, so the checkpoint still matches.
#
# Environment (defaults): PYTHON (python), RESOLUTION (32), TOTAL_ITRS (1500) and TRAIN_SECONDS
# (750), the demo's budget: training stops at whichever comes first; SAVE_EVERY (200), NAME (the
# folder's name: the dataset and experiment name), DATA_ROOT (data: the HDF5 file and moments),
# WEIGHTS_ROOT (weights), LOGS_ROOT (logs), SAMPLES_ROOT (samples), INCEPTION_BACKEND
# (torchvision), INCEPTION_WEIGHTS (the backend's file in the torch hub cache),
# METRIC_IMAGES (1000: samples for sample.py's IS/FID), SKIP_BAD (0; 1 skips unreadable
# images, which otherwise stop the script with one line naming the first).
set -euo pipefail

. "$(dirname -- "${BASH_SOURCE[0]}")/utils/launch_common.sh"

if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: bash scripts/launch_own_data.sh FOLDER [flags for train.py and sample.py...]" >&2
  exit 2
fi
FOLDER=${1%/}
shift

PYTHON=${PYTHON:-python}
RESOLUTION=${RESOLUTION:-32}
TOTAL_ITRS=${TOTAL_ITRS:-1500}
TRAIN_SECONDS=${TRAIN_SECONDS:-750}
SAVE_EVERY=${SAVE_EVERY:-200}
NAME=${NAME:-$(basename -- "$(realpath -m -- "$FOLDER")")}
DATA_ROOT=${DATA_ROOT:-data}
WEIGHTS_ROOT=${WEIGHTS_ROOT:-weights}
LOGS_ROOT=${LOGS_ROOT:-logs}
SAMPLES_ROOT=${SAMPLES_ROOT:-samples}
INCEPTION_BACKEND=${INCEPTION_BACKEND:-torchvision}
METRIC_IMAGES=${METRIC_IMAGES:-1000}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# train.py has architectures at these resolutions only: refused before make_hdf5.py writes.
case $RESOLUTION in
  32|64|128|256|512) ;;
  *) echo "error: RESOLUTION '$RESOLUTION' has no architecture: use 32, 64, 128, 256 or 512" >&2
     exit 2 ;;
esac
check_count TOTAL_ITRS iterations
check_count TRAIN_SECONDS seconds
check_count METRIC_IMAGES images
# A run without saves leaves nothing to sample: SAVE_EVERY must be a positive count.
check_count SAVE_EVERY 'iterations (the sheets are drawn from the last checkpoint)'
check_python

# NAME and the roots become flag values of the commands below, where a leading '-' would read
# as a flag.
for var in NAME DATA_ROOT WEIGHTS_ROOT LOGS_ROOT SAMPLES_ROOT; do
  if [[ ${!var} == -* ]]; then
    echo "error: $var '${!var}' starts with '-', which the commands this script runs would read as a flag; choose another" >&2
    exit 2
  fi
done

# 1. The class histogram, from the data path's own index (datasets.ImageFolder, whose
# check_layout refuses a folder that cannot train; NAME goes through the project's name check,
# so the view and files named after it stay under their roots). Its last line says whether
# the folder is flat, then the class count and where the Inception weights are looked for,
# tab-separated; the paths this script uses are its own, never read back from that line.
listing=$("$PYTHON" - -- "$FOLDER" "$NAME" "$DATA_ROOT" "$INCEPTION_BACKEND" <<'EOF'
import argparse
import os

import flags
import inception_utils
from datasets import DatasetError, ImageFolder, is_image_file
from files import atomic_path, check_name, own_folder


def run(config):
    folder, name = config['folder'], check_name(config['name'], 'NAME')
    index = f'{name}_imgs.npz'
    flat = False
    try:
        images = ImageFolder(folder, index_filename=index)
    except DatasetError:
        if not os.path.isdir(folder):
            raise
        entries = list(os.scandir(folder))
        if any(e.is_dir() for e in entries) or not any(is_image_file(e.name) for e in entries):
            raise
        # No class subfolders: one class, a symlinked folder the data path reads as its class.
        # own_folder: the view is made below DATA_ROOT, never through a link planted there.
        view = own_folder(config['data_root'], f'{name}_1class')
        link = os.path.join(view, name)
        target = os.path.abspath(folder)
        if not (os.path.islink(link) and os.readlink(link) == target):
            # Another folder of the same name had the view: it now shows this one, the link
            # made under a temporary name created here and renamed over the old one.
            with atomic_path(link) as tmp:
                os.remove(tmp)
                os.symlink(target, tmp)
        images = ImageFolder(view, index_filename=index)
        print(f'1 class: {len(images)} images')
        flat = True
    else:
        counts = [0] * len(images.classes)
        for label in images.labels:
            counts[label] += 1
        width = max(len(c) for c in images.classes)
        n = len(images.classes)
        print(f"{n} class{'es' if n > 1 else ''}, {len(images)} images:")
        for cls, count in zip(images.classes, counts):
            print(f'  {cls:<{width}}  {count}')
    weights = inception_utils.default_weights_path(config['backend'])
    print(f"{'flat' if flat else 'classes'}\t{len(images.classes)}\t{weights}")


parser = argparse.ArgumentParser()
parser.add_argument('folder')
parser.add_argument('name')
parser.add_argument('data_root')
parser.add_argument('backend')
flags.run_cli(run, parser)
EOF
)
printf '%s\n' "$listing" | sed '$d'
IFS=$'\t' read -r LAYOUT N_CLASSES DEFAULT_WEIGHTS < <(printf '%s\n' "$listing" | tail -n 1)
ROOT=$FOLDER
if [ "$LAYOUT" = flat ]; then ROOT="$DATA_ROOT/${NAME}_1class"; fi

# 2. The HDF5 file: make_hdf5.py stops at an unreadable image, naming it; SKIP_BAD=1 skips
# such images instead (its --skip_bad, which its line names as this script's variable).
HDF5="$DATA_ROOT/${NAME}${RESOLUTION}.hdf5"
DATA_FLAGS=(--dataset "$NAME" --dataset_root "$HDF5" --resolution "$RESOLUTION"
            --n_classes "$N_CLASSES" --data_root "$DATA_ROOT")
SKIP=()
if [ "${SKIP_BAD:-0}" = 1 ]; then SKIP=(--skip_bad); fi
{ "$PYTHON" make_hdf5.py --dataset "$NAME" --dataset_root "$ROOT" --resolution "$RESOLUTION" \
    --n_classes "$N_CLASSES" --data_root "$DATA_ROOT" --output "$HDF5" --num_workers 2 \
    --no_progress ${SKIP[@]+"${SKIP[@]}"} 2>&1 1>&3 3>&- \
    | sed 's/or pass --skip_bad/or run this script with SKIP_BAD=1/' >&2; } 3>&1

# 3. Inception moments, for sample.py's IS and FID, when the weights are here.
INCEPTION_WEIGHTS=${INCEPTION_WEIGHTS:-$DEFAULT_WEIGHTS}
METRIC_FLAGS=()
if [ -f "$INCEPTION_WEIGHTS" ]; then
  INCEPTION_FLAGS=(--inception_backend "$INCEPTION_BACKEND" --inception_weights "$INCEPTION_WEIGHTS")
  "$PYTHON" calculate_inception_moments.py "${DATA_FLAGS[@]}" "${INCEPTION_FLAGS[@]}" \
    --num_workers 0
  METRIC_FLAGS=(--sample_inception_metrics --num_inception_images "$METRIC_IMAGES"
                "${INCEPTION_FLAGS[@]}")
else
  echo "metrics are off: no $INCEPTION_BACKEND Inception weights at $INCEPTION_WEIGHTS; put the file there or set INCEPTION_WEIGHTS=PATH (INCEPTION_BACKEND=tf_fid for the FID Inception) to turn them on"
fi

# 4. Training: the demo's model and training flags (scripts/launch_demo.sh), on this data.
# MODEL_FLAGS reach train.py and sample.py, TRAIN_FLAGS train.py alone.
MODEL_FLAGS=(
  "${DATA_FLAGS[@]}" --experiment_name "$NAME"
  --weights_root "$WEIGHTS_ROOT" --logs_root "$LOGS_ROOT" --samples_root "$SAMPLES_ROOT"
  --G_ch 8 --D_ch 8 --G_attn 0 --D_attn 0
  --G_shared --shared_dim 32 --hier --dim_z 64
  --batch_size 32 --channels_last
  --ema --use_ema --ema_decay 0.99 --ema_start 100
  --seed 0
)
TRAIN_FLAGS=(
  --num_epochs 100000 --shuffle --num_workers 0 --no_pin_memory
  --num_D_steps 1 --G_lr 5e-4 --D_lr 5e-4 --G_B1 0.5 --D_B1 0.5
  # D sees real and fake shifted alike: at 1.03x the step's time every class is drawn at 96% or
  # more, with wider centroid spreads (docs/benchmarks.md#demo-variety)
  --DiffAugment translation
  --G_init ortho --D_init ortho --total_itrs "$TOTAL_ITRS"
  --save_every "$SAVE_EVERY" --num_save_copies 0 --test_every 0 --sv_log_interval 0
  --collapse_watch  # one line if the run collapses; keeps the last healthy set (docs/collapse.md)
)

train_capped "$(root_of weights "$WEIGHTS_ROOT" "$@")/$(last_flag --experiment_name "$NAME" "$@")" \
  "$PYTHON" train.py "${MODEL_FLAGS[@]}" "${TRAIN_FLAGS[@]}" "$@"

# 5. Sample sheets (and IS/FID when the moments were made) from the checkpoint's G_ema.
"$PYTHON" sample.py "${MODEL_FLAGS[@]}" --sample_sheets --sample_random \
  ${METRIC_FLAGS[@]+"${METRIC_FLAGS[@]}"} "$@"
# Where the commands wrote: extra flags override the script's roots and name.
RUN=$(last_flag --experiment_name "$NAME" "$@")
echo "class sheets: $(root_of samples "$SAMPLES_ROOT" "$@")/$RUN/-1/samples*.jpg (one row per class); checkpoints: $(root_of weights "$WEIGHTS_ROOT" "$@")/$RUN/; logs: $(root_of logs "$LOGS_ROOT" "$@")/$RUN/"
