"""Compute a dataset's Inception moments for FID (and real features for KID).

Streams the dataset once through the chosen Inception backend, accumulating
the pool features' mean and covariance in float64 (memory does not grow with
the dataset), reports the dataset's own Inception Score as the release does,
and writes {data_root}/{dataset without a trailing _hdf5}_inception_moments.npz
holding mu, sigma, the backend name and, unless --kid_feats 0, a uniform
random sample of real pool features for KID. The file is written atomically.

Example:
  python calculate_inception_moments.py --dataset I128_hdf5 --data_root data
"""
import os

import torch
import torch.nn.functional as F
from tqdm import tqdm

import inception_utils
import utils


def prepare_parser():
    """The release's flags plus the backend, weights, device, download and KID ones."""
    parser = utils.ReleaseParser(
        description='Calculate and store inception metrics.')
    parser.add_argument(
        '--dataset', type=str, default='I128_hdf5',
        help='Which Dataset to train on, out of I128, I256, C10, C100...'
             'Append _hdf5 to use the hdf5 version of the dataset. '
             '(default: %(default)s)')
    parser.add_argument(
        '--data_root', type=str, default='data',
        help='Default location where data is stored (default: %(default)s)')
    parser.add_argument(
        '--batch_size', type=int, default=64,
        help='Default overall batchsize (default: %(default)s)')
    parser.add_argument(
        '--parallel', action='store_true', default=False,
        help='Train with multiple GPUs (default: %(default)s)')
    parser.add_argument(
        '--augment', action='store_true', default=False,
        help='Augment with random crops and flips (default: %(default)s)')
    parser.add_argument(
        '--num_workers', type=int, default=8,
        help='Number of dataloader workers (default: %(default)s)')
    parser.add_argument(
        '--shuffle', action='store_true', default=False,
        help='Shuffle the data? (default: %(default)s)')
    parser.add_argument(
        '--seed', type=int, default=0,
        help='Random seed to use.')
    parser.add_argument(
        '--inception_backend', type=str, default='torchvision',
        choices=inception_utils.BACKENDS,
        help='Inception network: the release\'s torchvision one, or '
             'tf_fid, the TF-ported FID Inception behind published FIDs '
             '(default: %(default)s)')
    parser.add_argument(
        '--inception_weights', type=str, default=None,
        help='Local Inception weights file (default: the torch hub cache)')
    parser.add_argument(
        '--device', type=str, default=None,
        help='Device to run on (default: cuda if available, else cpu)')
    utils.add_custom_dataset_args(parser)
    utils.add_download_arg(parser)
    parser.add_argument(
        '--num_samples', type=int, default=None,
        help='Use a seeded (--seed) random subset of this many images, '
             "chosen as train.py's --num_samples chooses (default: all)")
    parser.add_argument(
        '--kid_feats', type=int, default=inception_utils.DEFAULT_KID_FEATS,
        help='Real pool features stored for KID; 0 stores none '
             '(default: %(default)s)')
    return parser


def run(config):
    """Stream the dataset through Inception and write the moments file."""
    utils.check_dataset(config)
    device = inception_utils.resolve_device(config['device'])
    torch.manual_seed(config['seed'])
    backend = config['inception_backend']
    # Fail before touching the data if the weights cannot be had.
    inception_utils.check_inception_weights(backend,
                                            config['inception_weights'])
    # Every image counts, as in the release; pinned memory only helps CUDA.
    loader = utils.get_data_loaders(
        **{**config, 'drop_last': False,
           'pin_memory': device.type == 'cuda'})[0]
    net = inception_utils.load_inception_net(
        config['parallel'], backend, config['inception_weights'], device)
    feats = inception_utils.FeatureStats(keep=config['kid_feats'],
                                         seed=config['seed'])
    num_images = len(loader.dataset)
    scores = inception_utils.InceptionScoreStats(num_images,
                                                 min(10, num_images))
    with torch.no_grad():
        for x, _ in tqdm(loader):
            pool, logits = net(x.to(device).float())
            feats.update(pool)
            scores.update(F.softmax(logits.double(), 1))
    is_mean, is_std = scores.result()
    print(f'Training data from dataset {config["dataset"]} has IS of '
          f'{is_mean:5.5f} +/- {is_std:5.5f} ({backend} backend)')
    path = os.path.join(config['data_root'],
                        inception_utils.moments_filename(config['dataset']))
    inception_utils.save_inception_moments(
        path, feats.mean, feats.cov, backend,
        feats.feats if config['kid_feats'] > 0 else None)
    print(f'Saved means and covariances of {feats.n} images to {path}')
    return path


def main():
    """Parse the command line and run; bad input gets one line and exit status 2."""
    utils.run_cli(run, prepare_parser())


if __name__ == '__main__':
    main()
