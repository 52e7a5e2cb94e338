#!/bin/bash
# Preprocess ImageNet (data/ImageNet/<class>/<image>) into data/ILSVRC128.hdf5,
# then compute its Inception moments for FID, as the release's script does.
set -e
python make_hdf5.py --dataset I128 --batch_size 256 --data_root data
python calculate_inception_moments.py --dataset I128_hdf5 --data_root data
