#!/bin/bash
# The DiffAugment fork's launch script (mit-han-lab/data-efficient-gans@0b63395,
# DiffAugment-biggan-cifar/scripts/; google/lecam-gan has a copy), arguments unchanged.
# CIFAR is read from data/cifar; flags given to this script are appended, e.g.
#   bash scripts/data_efficient/DiffAugment-biggan-cifar100.sh --data_root /datasets
python train.py --experiment_name DiffAugment-biggan-cifar100 --DiffAugment translation,cutout \
--mirror_augment --use_multiepoch_sampler \
--which_best FID --num_inception_images 10000 \
--shuffle --batch_size 50 --parallel \
--num_G_accumulations 1 --num_D_accumulations 1 --num_epochs 2000 \
--num_D_steps 4 --G_lr 2e-4 --D_lr 2e-4 \
--dataset C100 \
--G_ortho 0.0 \
--G_attn 0 --D_attn 0 \
--G_init N02 --D_init N02 \
--ema --use_ema --ema_start 1000 \
--test_every 4000 --save_every 2000 --seed 0 \
"$@"
