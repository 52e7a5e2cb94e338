"""Compute a dataset's Inception moments for FID (and real features for KID).

Streams the dataset once through the chosen Inception backend, accumulating
the pool features' mean and covariance in float64 (memory does not grow with
the dataset), reports the dataset's own Inception Score as the release does,
and writes {data_root}/{dataset without a trailing _hdf5}_inception_moments.npz
holding mu, sigma, the backend name and, unless --kid_feats 0, a uniform
random sample of real pool features for KID. The file is written atomically.

With --per_class, the same pass also writes each class's moments, for intra-FID, to
{data_root}/{dataset}_inception_moments_per_class.hdf5 (inception_utils.PerClassMomentsWriter:
one class per HDF5 chunk, read one class at a time).

Example:
  python calculate_inception_moments.py --dataset I128_hdf5 --data_root data [--per_class]
"""
import flags  # first: a Ctrl-C during the slow imports below is one line (flags.py)

# isort: split
import contextlib
import os

import h5py
import torch
import torch.nn.functional as F
from tqdm import tqdm

import inception_utils
from datasets import check_dataset, check_training_set, get_data_loaders, nclass_dict, to_float
from distributed import pick_device
from files import atomic_path, check_target, check_writable


def prepare_parser():
    """The release's flags plus the backend, weights, device, download and KID ones."""
    parser = flags.new_parser('Calculate and store inception metrics.')
    flags.add_flags(parser, ['--dataset', '--data_root', '--batch_size', '--parallel', '--augment',
                             '--num_workers', '--shuffle', '--seed', '--inception_backend',
                             '--inception_weights', '--device', *flags.CUSTOM_DATASET_FLAGS,
                             '--download', '--num_samples', '--kid_feats', '--per_class'])
    return parser


def run(config):
    """Stream the dataset through Inception and write the moments file."""
    flags.check_flags(config)
    check_dataset(config)
    check_writable(config['data_root'], '--data_root')
    # What it writes, checked before any image is read (a folder or FIFO there).
    path = os.path.join(config['data_root'], inception_utils.moments_filename(config['dataset']))
    per_class_path = os.path.join(config['data_root'], inception_utils.per_class_moments_filename(
        config['dataset']))
    check_target(path, 'the moments file')
    if config.get('per_class'):
        check_target(per_class_path, 'the per-class moments file')
    device = pick_device(config['device'])
    torch.manual_seed(config['seed'])
    backend = config['inception_backend']
    # Fail before touching the data if the weights cannot be had.
    inception_utils.check_inception_weights(backend,
                                            config['inception_weights'])
    # Every image counts, as in the release; pinned memory only helps CUDA.
    loader = get_data_loaders(
        **{**config, 'drop_last': False, 'raw': True,
           'pin_memory': device.type == 'cuda'})[0]
    # Moments of data the model cannot train on (other labels, another resolution) would be
    # compared with the wrong thing.
    check_training_set(loader.dataset, config)
    net = inception_utils.load_inception_net(
        config['parallel'], backend, config['inception_weights'], device)
    feats = inception_utils.FeatureStats(keep=config['kid_feats'],
                                         seed=config['seed'])
    num_images = len(loader.dataset)
    scores = inception_utils.InceptionScoreStats(num_images,
                                                 min(10, num_images))
    with contextlib.ExitStack() as stack:
        per_class = None
        if config.get('per_class'):
            tmp = stack.enter_context(atomic_path(per_class_path))
            per_class = inception_utils.PerClassMomentsWriter(
                stack.enter_context(h5py.File(tmp, 'w')),
                config.get('n_classes') or nclass_dict[config['dataset']], backend)
        with torch.no_grad():
            for x, y in tqdm(loader):
                images = to_float(x.to(device)).float()
                pool, logits = net(images)
                inception_utils.check_net_outputs(images, pool, logits)
                feats.update(pool)
                scores.update(F.softmax(logits.double(), 1))
                if per_class is not None:
                    per_class.update(pool, y)
        if per_class is not None:
            counts = per_class.finish()
            print(f'Saved the moments of {int((counts >= 2).sum())} classes (of {len(counts)}) '
                  f'to {per_class_path}')
    is_mean, is_std = scores.result()
    print(f'Training data from dataset {config["dataset"]} has IS of '
          f'{is_mean:5.5f} +/- {is_std:5.5f} ({backend} backend)')
    inception_utils.save_inception_moments(
        path, feats.mean, feats.cov, backend,
        feats.feats if config['kid_feats'] > 0 else None, count=feats.n)
    print(f'Saved means and covariances of {feats.n} images to {path}')
    return path


def main(argv=None):
    """Parse the command line and run; bad input gets one line and exit status 2."""
    flags.run_cli(run, prepare_parser(), argv)


if __name__ == '__main__':
    main()
