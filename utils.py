"""Everything train.py and sample.py share, in sections: arguments, datasets, loaders, EMA and
regularisers, checkpoints, logging, sampling, latents."""
import contextlib
import datetime
import functools
import hashlib
import json
import math
import os
import pickle
import random
import sys
import time
from argparse import ArgumentParser

import numpy as np
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms
from torch.utils.data import DataLoader, Sampler

import BigGAN


class ConfigError(ValueError):
    """Bad input from the user: entry points print its one-line message and exit non-zero."""


def run_cli(run, parser, argv=None, errors=()):
    """Parse argv (default: the command line) and call run(config); bad input (user_errors,
    plus the entry point's own errors) gets one line on stderr and exit status 2 instead of
    a traceback."""
    config = vars(parser.parse_args(argv))
    try:
        return run(config)
    except user_errors() + tuple(errors) as e:
        print('error: %s' % e, file=sys.stderr)
        sys.exit(2)


def user_errors():
    """The exception types entry points report as one line (bad flags, files, data)."""
    import datasets
    import inception_utils
    return (ConfigError, FileNotFoundError, datasets.DatasetError,
            inception_utils.InceptionWeightsError, inception_utils.InceptionMomentsError)


# ----------------------------------------------------------------------------
# Arguments.

# Flags the release's entry points did not have; the README lists them.
ADDED_FLAGS = frozenset([
    '--device', '--no_toggle_grads', '--total_itrs', '--dataset_root', '--resolution',
    '--n_classes', '--download', '--amp', '--channels_last', '--compile',
    '--inception_backend', '--inception_weights', '--kid', '--kid_feats',  # + moments
    '--compression_filter', '--skip_bad', '--output', '--no_progress',  # make_hdf5.py
    # add_data_efficient_args (the DiffAugment and LeCam forks' flags)
    '--DiffAugment', '--CR', '--CR_augment', '--num_samples', '--mirror_augment', '--LC',
    '--LC_ema_decay', '--LC_start'])


class ReleaseParser(ArgumentParser):
    """ArgumentParser that reads abbreviated release flags as the release's parser did.

    argparse takes any unique prefix of a flag, and the flags added here make some of the
    release's unique prefixes ambiguous (--res: --resume or --resolution?). A prefix that
    matches exactly one of the release's flags keeps meaning that flag.
    """

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._release_prefix(a) for a in args], namespace)

    def _release_prefix(self, arg):
        """arg with an abbreviated release flag written out; any other arg unchanged."""
        flag, eq, value = arg.partition('=')
        if not flag.startswith('--') or flag in self._option_string_actions:
            return arg
        matches = [o for o in self._option_string_actions if o.startswith(flag)]
        release = [o for o in matches if o not in ADDED_FLAGS]
        if len(matches) > 1 and len(release) == 1:
            return release[0] + eq + value
        return arg


def prepare_parser():
    """The release's training parser, flag for flag, plus this rebuild's additions."""
    usage = 'Parser for all scripts.'
    parser = ReleaseParser(description=usage)

    # Dataset/Dataloader.
    parser.add_argument('--dataset', type=str, default='I128_hdf5',
                        help='Dataset name from the table in utils.py (I32..I256[_hdf5], C10, '
                             'C100, S32), or any name with --dataset_root, --resolution and '
                             '--n_classes (default: %(default)s)')
    parser.add_argument('--augment', action='store_true', default=False,
                        help='Augment with random crops and flips (default: %(default)s)')
    parser.add_argument('--num_workers', type=int, default=8,
                        help='Number of dataloader workers (default: %(default)s)')
    parser.add_argument('--no_pin_memory', action='store_false', dest='pin_memory', default=True,
                        help='Pin data into memory through dataloader? (default: %(default)s)')
    parser.add_argument('--shuffle', action='store_true', default=False,
                        help='Shuffle the data (strongly recommended)? (default: %(default)s)')
    parser.add_argument('--load_in_mem', action='store_true', default=False,
                        help='Load all data into memory? (default: %(default)s)')
    parser.add_argument('--use_multiepoch_sampler', action='store_true', default=False,
                        help='Use one sampler over all epochs (default: %(default)s)')

    # Model.
    parser.add_argument('--model', type=str, default='BigGAN',
                        help='Model module: BigGAN or BigGANdeep (default: %(default)s)')
    parser.add_argument('--G_param', type=str, default='SN',
                        help='Parameterization style for G: SN or plain (default: %(default)s)')
    parser.add_argument('--D_param', type=str, default='SN',
                        help='Parameterization style for D: SN or plain (default: %(default)s)')
    parser.add_argument('--G_ch', type=int, default=64,
                        help='Channel multiplier for G (default: %(default)s)')
    parser.add_argument('--D_ch', type=int, default=64,
                        help='Channel multiplier for D (default: %(default)s)')
    parser.add_argument('--G_depth', type=int, default=1,
                        help='Resblocks per stage in G (BigGANdeep) (default: %(default)s)')
    parser.add_argument('--D_depth', type=int, default=1,
                        help='Resblocks per stage in D (BigGANdeep) (default: %(default)s)')
    parser.add_argument('--D_thin', action='store_false', dest='D_wide', default=True,
                        help='Use the SN-GAN channel pattern for D (stores False into D_wide)')
    parser.add_argument('--G_shared', action='store_true', default=False,
                        help='Use a shared class embedding in G (default: %(default)s)')
    parser.add_argument('--shared_dim', type=int, default=0,
                        help="G's shared embedding size; 0 means dim_z (default: %(default)s)")
    parser.add_argument('--dim_z', type=int, default=128,
                        help='Noise dimensionality (default: %(default)s)')
    parser.add_argument('--z_var', type=float, default=1.0,
                        help='Standard deviation of z (the release passes it as the std; '
                             'default: %(default)s)')
    parser.add_argument('--hier', action='store_true', default=False,
                        help='Use hierarchical z in G (default: %(default)s)')
    parser.add_argument('--cross_replica', action='store_true', default=False,
                        help='Synchronise batch-norm statistics across DDP ranks '
                             '(default: %(default)s)')
    parser.add_argument('--mybn', action='store_true', default=False,
                        help="Use the release's BN, which supports standing stats "
                             '(default: %(default)s)')
    parser.add_argument('--G_nl', type=str, default='relu',
                        help='Activation function for G (default: %(default)s)')
    parser.add_argument('--D_nl', type=str, default='relu',
                        help='Activation function for D (default: %(default)s)')
    parser.add_argument('--G_attn', type=str, default='64',
                        help="Resolutions with attention in G, '_'-separated; '0' none "
                             '(default: %(default)s)')
    parser.add_argument('--D_attn', type=str, default='64',
                        help="Resolutions with attention in D, '_'-separated; '0' none "
                             '(default: %(default)s)')
    parser.add_argument('--norm_style', type=str, default='bn',
                        help='Normalizer style for G: bn, in, gn or nonorm (default: %(default)s)')

    # Model init.
    parser.add_argument('--seed', type=int, default=0,
                        help='Random seed (default: %(default)s)')
    parser.add_argument('--G_init', type=str, default='ortho',
                        help='Init style for G: ortho, N02, glorot/xavier (default: %(default)s)')
    parser.add_argument('--D_init', type=str, default='ortho',
                        help='Init style for D (default: %(default)s)')
    parser.add_argument('--skip_init', action='store_true', default=False,
                        help='Skip initialization, ideal for testing (default: %(default)s)')

    # Optimizer.
    parser.add_argument('--G_lr', type=float, default=5e-5,
                        help='Learning rate for G (default: %(default)s)')
    parser.add_argument('--D_lr', type=float, default=2e-4,
                        help='Learning rate for D (default: %(default)s)')
    parser.add_argument('--G_B1', type=float, default=0.0,
                        help='Beta1 for G (default: %(default)s)')
    parser.add_argument('--D_B1', type=float, default=0.0,
                        help='Beta1 for D (default: %(default)s)')
    parser.add_argument('--G_B2', type=float, default=0.999,
                        help='Beta2 for G (default: %(default)s)')
    parser.add_argument('--D_B2', type=float, default=0.999,
                        help='Beta2 for D (default: %(default)s)')

    # Batch size, parallel, and precision.
    parser.add_argument('--batch_size', type=int, default=64,
                        help='Default overall batch size, per process (default: %(default)s)')
    parser.add_argument('--G_batch_size', type=int, default=0,
                        help='Batch size to use for G; 0 means same as D (default: %(default)s)')
    parser.add_argument('--num_G_accumulations', type=int, default=1,
                        help="Number of passes to accumulate G's gradients over "
                             '(default: %(default)s)')
    parser.add_argument('--num_D_steps', type=int, default=2,
                        help='Number of D steps per G step (default: %(default)s)')
    parser.add_argument('--num_D_accumulations', type=int, default=1,
                        help="Number of passes to accumulate D's gradients over "
                             '(default: %(default)s)')
    parser.add_argument('--split_D', action='store_true', default=False,
                        help='Run D twice rather than concatenating inputs? (default: %(default)s)')
    parser.add_argument('--num_epochs', type=int, default=100,
                        help='Number of epochs to train for (default: %(default)s)')
    parser.add_argument('--parallel', action='store_true', default=False,
                        help='Train with nn.DataParallel over the visible GPUs '
                             '(default: %(default)s)')
    parser.add_argument('--G_fp16', action='store_true', default=False,
                        help='Train G in fp16 (mapped to --amp fp16; default: %(default)s)')
    parser.add_argument('--D_fp16', action='store_true', default=False,
                        help='Train D in fp16 (mapped to --amp fp16; default: %(default)s)')
    parser.add_argument('--D_mixed_precision', action='store_true', default=False,
                        help='Mixed precision in D (mapped to --amp fp16; default: %(default)s)')
    parser.add_argument('--G_mixed_precision', action='store_true', default=False,
                        help='Mixed precision in G (mapped to --amp fp16; default: %(default)s)')
    parser.add_argument('--accumulate_stats', action='store_true', default=False,
                        help='Accumulate "standing" batchnorm stats? (default: %(default)s)')
    parser.add_argument('--num_standing_accumulations', type=int, default=16,
                        help='Number of forward passes to use in accumulating standing stats? '
                             '(default: %(default)s)')

    # Bookkeeping.
    parser.add_argument('--G_eval_mode', action='store_true', default=False,
                        help='Run G in eval mode (running/standing stats?) at sample/test time? '
                             '(default: %(default)s)')
    parser.add_argument('--save_every', type=int, default=2000,
                        help='Save every X iterations; 0 never (default: %(default)s)')
    parser.add_argument('--num_save_copies', type=int, default=2,
                        help='How many copies to save (default: %(default)s)')
    parser.add_argument('--num_best_copies', type=int, default=2,
                        help='How many previous best checkpoints to save (default: %(default)s)')
    parser.add_argument('--which_best', type=str, default='IS',
                        help='Which metric to use to determine when to save new "best" '
                             'checkpoints, one of IS or FID (default: %(default)s)')
    parser.add_argument('--no_fid', action='store_true', default=False,
                        help='Calculate IS only, not FID? (default: %(default)s)')
    parser.add_argument('--test_every', type=int, default=5000,
                        help='Test every X iterations; 0 never (default: %(default)s)')
    parser.add_argument('--num_inception_images', type=int, default=50000,
                        help='Number of samples to compute inception metrics with '
                             '(default: %(default)s)')
    parser.add_argument('--hashname', action='store_true', default=False,
                        help='Use a stable hash of the experiment name instead of the full '
                             'config (default: %(default)s)')
    parser.add_argument('--base_root', type=str, default='',
                        help='Default location to store all weights, samples, data, and logs '
                             '(default: %(default)s)')
    parser.add_argument('--data_root', type=str, default='data',
                        help='Default location where data is stored (default: %(default)s)')
    parser.add_argument('--weights_root', type=str, default='weights',
                        help='Default location to store weights (default: %(default)s)')
    parser.add_argument('--logs_root', type=str, default='logs',
                        help='Default location to store logs (default: %(default)s)')
    parser.add_argument('--samples_root', type=str, default='samples',
                        help='Default location to store samples (default: %(default)s)')
    parser.add_argument('--pbar', type=str, default='mine',
                        help='Type of progressbar to use; one of "mine" or "tqdm" '
                             '(default: %(default)s)')
    parser.add_argument('--name_suffix', type=str, default='',
                        help='Suffix for experiment name for loading weights for sampling '
                             '(consider "best0") (default: %(default)s)')
    parser.add_argument('--experiment_name', type=str, default='',
                        help='Optionally override the automatic experiment naming with this '
                             'arg. (default: %(default)s)')
    parser.add_argument('--config_from_name', action='store_true', default=False,
                        help='Use a hash of the experiment name instead of the full config '
                             '(default: %(default)s)')

    # EMA.
    parser.add_argument('--ema', action='store_true', default=False,
                        help='Keep an ema of G''s weights? (default: %(default)s)')
    parser.add_argument('--ema_decay', type=float, default=0.9999,
                        help='EMA decay rate (default: %(default)s)')
    parser.add_argument('--use_ema', action='store_true', default=False,
                        help='Use the EMA parameters of G for evaluation? (default: %(default)s)')
    parser.add_argument('--ema_start', type=int, default=0,
                        help='When to start updating the EMA weights (default: %(default)s)')

    # Numerical precision and SV stuff.
    parser.add_argument('--adam_eps', type=float, default=1e-8,
                        help='epsilon value to use for Adam (default: %(default)s)')
    parser.add_argument('--BN_eps', type=float, default=1e-5,
                        help='epsilon value to use for BatchNorm (default: %(default)s)')
    parser.add_argument('--SN_eps', type=float, default=1e-8,
                        help='epsilon value to use for Spectral Norm(default: %(default)s)')
    parser.add_argument('--num_G_SVs', type=int, default=1,
                        help='Number of SVs to track in G (default: %(default)s)')
    parser.add_argument('--num_D_SVs', type=int, default=1,
                        help='Number of SVs to track in D (default: %(default)s)')
    parser.add_argument('--num_G_SV_itrs', type=int, default=1,
                        help='Number of SV itrs in G (default: %(default)s)')
    parser.add_argument('--num_D_SV_itrs', type=int, default=1,
                        help='Number of SV itrs in D (default: %(default)s)')

    # Ortho reg.
    parser.add_argument('--G_ortho', type=float, default=0.0,
                        help='Modified ortho reg coefficient in G (default: %(default)s)')
    parser.add_argument('--D_ortho', type=float, default=0.0,
                        help='Modified ortho reg coefficient in D (default: %(default)s)')
    parser.add_argument('--toggle_grads', action='store_true', default=True,
                        help='Toggle D and G''s "requires_grad" settings when not training '
                             'them? (default: %(default)s)')
    parser.add_argument('--no_toggle_grads', action='store_false', dest='toggle_grads',
                        help='Keep requires_grad on for both networks throughout the step')

    # Which train function.
    parser.add_argument('--which_train_fn', type=str, default='GAN',
                        help='How2trainyourbois (default: %(default)s)')

    # Resume training.
    parser.add_argument('--load_weights', type=str, default='',
                        help='Suffix for which weights to load (e.g. best0, copy0) '
                             '(default: %(default)s)')
    parser.add_argument('--resume', action='store_true', default=False,
                        help='Resume training? (default: %(default)s)')

    # Log stuff.
    parser.add_argument('--logstyle', type=str, default='%3.3e',
                        help='What style to use when logging training metrics? '
                             'One of: %%#.#f/ %%#.#e (float/exp, text), pickle (python pickle), '
                             'npz (numpy zip), mat (MATLAB .mat file) (default: %(default)s)')
    parser.add_argument('--log_G_spectra', action='store_true', default=False,
                        help='Log the top 3 singular values in each SN layer in G? '
                             '(default: %(default)s)')
    parser.add_argument('--log_D_spectra', action='store_true', default=False,
                        help='Log the top 3 singular values in each SN layer in D? '
                             '(default: %(default)s)')
    parser.add_argument('--sv_log_interval', type=int, default=10,
                        help='Iteration interval for logging singular values '
                             '(default: %(default)s)')

    # Added by this rebuild.
    parser.add_argument('--device', type=str, default='',
                        help="Device to run on, e.g. cpu, cuda, cuda:1; '' picks CUDA when "
                             'available, else CPU (default: auto)')
    add_custom_dataset_args(parser)
    add_download_arg(parser)
    parser.add_argument('--total_itrs', type=int, default=0,
                        help='Stop after this many iterations in all; 0 runs num_epochs')
    parser.add_argument('--amp', type=str, default='', choices=['', 'bf16', 'fp16'],
                        help='Mixed precision through torch.autocast; fp16 adds a GradScaler '
                             "(default: '' = float32)")
    parser.add_argument('--channels_last', action='store_true', default=False,
                        help='Use channels_last memory format for G and D')
    parser.add_argument('--compile', action='store_true', default=False,
                        help='torch.compile G and D')
    parser.add_argument('--inception_backend', type=str, default='torchvision',
                        choices=['torchvision', 'tf_fid'],
                        help="torchvision (the release's, not comparable to published numbers) "
                             'or tf_fid (the TF-ported FID Inception published FIDs use)')
    parser.add_argument('--inception_weights', type=str, default='',
                        help='Local file with the Inception weights (default: torch hub cache)')
    parser.add_argument('--kid', action='store_true', default=False,
                        help='Also report KID beside FID')
    add_data_efficient_args(parser)
    return parser


def add_download_arg(parser):
    """--download, for the entry points that can read CIFAR."""
    parser.add_argument('--download', action='store_true', default=False,
                        help='Let torchvision download CIFAR when its files are missing')
    return parser


def add_data_efficient_args(parser):
    """The flags of the DiffAugment (mit-han-lab/data-efficient-gans) and LeCam
    (google/lecam-gan) forks, with their types and defaults; README "Training on little data"."""
    parser.add_argument('--DiffAugment', type=str, default='',
                        help='DiffAugment policy: comma-separated names from color, '
                             "translation, cutout, applied to D's inputs in both steps "
                             "(default: '' = off)")
    parser.add_argument('--CR', type=float, default=0,
                        help='Consistency regularisation weight (CR-BigGAN); 0 = off '
                             '(default: %(default)s)')
    parser.add_argument('--CR_augment', type=str, default='flip,translation',
                        help="Augmentation of the reals for --CR: an optional 'flip,' prefix "
                             "(random h-flip), then a DiffAugment policy; '' compares with the "
                             'un-augmented reals (default: %(default)s)')
    parser.add_argument('--num_samples', type=int, default=None,
                        help='Train on a seeded (--seed) random subset of this many images '
                             'of the training set (default: all)')
    parser.add_argument('--mirror_augment', action='store_true', default=False,
                        help='Augment the data with random horizontal flips only '
                             '(default: %(default)s)')
    parser.add_argument('--LC', type=float, default=0,
                        help='LeCam regularisation weight; 0 = off (default: %(default)s)')
    parser.add_argument('--LC_ema_decay', type=float, default=0.9,
                        help="Decay of the moving averages of D's outputs that LeCam "
                             'anchors to (default: %(default)s)')
    parser.add_argument('--LC_start', type=int, default=1000,
                        help='LeCam applies after this iteration; before it the anchors are '
                             'the latest batch means (default: %(default)s)')
    return parser


def check_data_efficient_args(config):
    """Refuse bad data-efficient flags at start-up (the fork failed mid-training)."""
    from DiffAugment_pytorch import PolicyError, policy_names
    try:
        policy_names(config.get('DiffAugment', ''))
    except PolicyError as e:
        raise ConfigError('--DiffAugment: %s' % e) from None
    cr_augment = config.get('CR_augment') or ''
    names = cr_augment.split(',')
    if 'flip' in names[1:] or cr_augment == 'flip':
        raise ConfigError("--CR_augment %r: flip goes first and with a comma, e.g. "
                          "'flip,translation', or 'flip,' for a flip alone" % cr_augment)
    try:
        policy_names(cr_augment.replace('flip,', ''))
    except PolicyError as e:
        raise ConfigError('--CR_augment: %s' % e) from None
    for key in ['CR', 'LC']:
        if config.get(key, 0) < 0:
            raise ConfigError('--%s must be at least 0, got %g' % (key, config[key]))
    if not 0.0 <= config.get('LC_ema_decay', 0.9) <= 1.0:
        raise ConfigError('--LC_ema_decay must lie in [0, 1], got %g' % config['LC_ema_decay'])
    if config.get('num_samples') is not None and config['num_samples'] < 1:
        raise ConfigError('--num_samples must be at least 1, got %d' % config['num_samples'])


def add_custom_dataset_args(parser):
    """--dataset_root, --resolution and --n_classes: a dataset without editing the table.
    train.py, sample.py, make_hdf5.py and calculate_inception_moments.py share them."""
    parser.add_argument('--dataset_root', type=str, default='',
                        help='Image folder (root/<class>/<image>) or HDF5 file of a dataset '
                             'not in the table, or to read instead of the table\'s')
    parser.add_argument('--resolution', type=int, default=0,
                        help="Image resolution of a custom dataset; 0 takes the table's")
    parser.add_argument('--n_classes', type=int, default=0,
                        help="Class count of a custom dataset; 0 takes the table's")
    return parser


def add_sample_parser(parser):
    """Flags only sample.py has."""
    parser.add_argument('--sample_npz', action='store_true', default=False,
                        help='Sample "sample_num_npz" images and save to npz? '
                             '(default: %(default)s)')
    parser.add_argument('--sample_num_npz', type=int, default=50000,
                        help='Number of images to sample when sampling NPZs '
                             '(default: %(default)s)')
    parser.add_argument('--sample_sheets', action='store_true', default=False,
                        help='Produce class-conditional sample sheets and stick them in '
                             'the samples root? (default: %(default)s)')
    parser.add_argument('--sample_interps', action='store_true', default=False,
                        help='Produce interpolation sheets and stick them in '
                             'the samples root? (default: %(default)s)')
    parser.add_argument('--sample_sheet_folder_num', type=int, default=-1,
                        help='Number to use for the folder for these sample sheets '
                             '(default: %(default)s)')
    parser.add_argument('--sample_random', action='store_true', default=False,
                        help='Produce a single random sheet? (default: %(default)s)')
    parser.add_argument('--sample_trunc_curves', type=str, default='',
                        help='Get inception metrics with a range of variances?'
                             'To use this, specify a startpoint, step, and endpoint, e.g. '
                             '--sample_trunc_curves 0.2_0.1_1.0 for a startpoint of 0.2, '
                             'endpoint of 1.0, and stepsize of 1.0.  Note that this is '
                             'not exactly identical to using tf.truncated_normal, but should '
                             'have approximately the same effect. (default: %(default)s)')
    parser.add_argument('--sample_inception_metrics', action='store_true', default=False,
                        help='Calculate Inception metrics with sample.py? '
                             '(default: %(default)s)')
    return parser


activation_dict = {'inplace_relu': nn.ReLU(inplace=True),
                   'relu': nn.ReLU(inplace=False),
                   'ir': nn.ReLU(inplace=True)}


def pick_device(name=''):
    """torch.device from a flag value; '' picks CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def update_config_roots(config):
    """Peg every root folder under --base_root when it is given."""
    if config['base_root']:
        for key in ['data', 'weights', 'logs', 'samples']:
            config['%s_root' % key] = '%s/%s' % (config['base_root'], key)
    return config


def check_dataset(config):
    """Refuse a dataset that is neither in the table nor described by the custom flags."""
    if config['dataset'] not in DATASETS and not (
            config.get('dataset_root') and config.get('resolution') and config.get('n_classes')):
        raise ConfigError('unknown dataset %r: use one of %s, or pass --dataset_root, '
                          '--resolution and --n_classes for your own'
                          % (config['dataset'], ', '.join(DATASETS)))


def prepare_config(config):
    """Derive what every entry point needs from the flags, and refuse combinations that cannot
    work. Returns config, completed with resolution, n_classes, activations, roots and device."""
    check_dataset(config)
    entry = DATASETS.get(config['dataset'])
    config['resolution'] = config.get('resolution') or entry.resolution
    config['n_classes'] = config.get('n_classes') or entry.n_classes
    for key in ['G_nl', 'D_nl']:
        if config[key] not in activation_dict:
            raise ConfigError('unknown --%s %r: use one of %s'
                              % (key, config[key], ', '.join(activation_dict)))
    config['G_activation'] = activation_dict[config['G_nl']]
    config['D_activation'] = activation_dict[config['D_nl']]
    if config['model'] not in ('BigGAN', 'BigGANdeep'):
        raise ConfigError('unknown --model %r: use BigGAN or BigGANdeep' % config['model'])
    if config['resolution'] not in (32, 64, 128, 256, 512):
        raise ConfigError('resolution %d has no architecture: use 32, 64, 128, 256 or 512'
                          % config['resolution'])
    # The release printed a note for an unknown init and kept PyTorch's default init.
    for key in ['G_init', 'D_init']:
        if not config['skip_init'] and config[key] not in BigGAN.INIT_STYLES:
            raise ConfigError('unknown --%s %r: use %s'
                              % (key, config[key], ', '.join(BigGAN.INIT_STYLES)))
    for key in ['batch_size', 'num_D_steps', 'num_D_accumulations', 'num_G_accumulations']:
        if config[key] < 1:
            raise ConfigError('--%s must be at least 1, got %d' % (key, config[key]))
    if config['which_best'] not in ('IS', 'FID'):
        raise ConfigError('--which_best must be IS or FID, got %r' % config['which_best'])
    measuring = (config['test_every'] > 0 or config.get('sample_inception_metrics')
                 or config.get('sample_trunc_curves'))
    if measuring and config['num_inception_images'] < 10:
        raise ConfigError('--num_inception_images must be at least 10 (IS averages over 10 '
                          'splits), got %d' % config['num_inception_images'])
    if not 0.0 <= config['ema_decay'] <= 1.0:
        raise ConfigError('--ema_decay must lie in [0, 1], got %g' % config['ema_decay'])
    if any([config['G_fp16'], config['D_fp16'], config['G_mixed_precision'],
            config['D_mixed_precision']]) and not config.get('amp'):
        print("note: the release's fp16 flags now mean --amp fp16 (torch.autocast + GradScaler)")
        config['amp'] = 'fp16'
    check_data_efficient_args(config)
    config = update_config_roots(config)
    config['device'] = str(pick_device(config.get('device', '')))
    return config


def seed_rng(seed):
    """Seed torch (every device), numpy and python."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def prepare_root(config):
    for key in ['weights_root', 'logs_root', 'samples_root']:
        os.makedirs(config[key], exist_ok=True)


def join_strings(base_string, strings):
    return base_string.join([item for item in strings if item])


def hashname(name):
    """A short stable name: the same in every process and run (the release's was salted)."""
    return 'h' + hashlib.sha256(name.encode()).hexdigest()[:12]


def name_from_config(config):
    """The release's experiment name, built from the config."""
    name = '_'.join([item for item in [
        'Big%s' % config['which_train_fn'],
        config['dataset'],
        config['model'] if config['model'] != 'BigGAN' else None,
        'seed%d' % config['seed'],
        'Gch%d' % config['G_ch'],
        'Dch%d' % config['D_ch'],
        'Gd%d' % config['G_depth'] if config['G_depth'] > 1 else None,
        'Dd%d' % config['D_depth'] if config['D_depth'] > 1 else None,
        'bs%d' % config['batch_size'],
        'Gfp16' if config['G_fp16'] else None,
        'Dfp16' if config['D_fp16'] else None,
        'nDs%d' % config['num_D_steps'] if config['num_D_steps'] > 1 else None,
        'nDa%d' % config['num_D_accumulations'] if config['num_D_accumulations'] > 1 else None,
        'nGa%d' % config['num_G_accumulations'] if config['num_G_accumulations'] > 1 else None,
        'Glr%2.1e' % config['G_lr'],
        'Dlr%2.1e' % config['D_lr'],
        'GB%3.3f' % config['G_B1'] if config['G_B1'] != 0.0 else None,
        'GBB%3.3f' % config['G_B2'] if config['G_B2'] != 0.999 else None,
        'DB%3.3f' % config['D_B1'] if config['D_B1'] != 0.0 else None,
        'DBB%3.3f' % config['D_B2'] if config['D_B2'] != 0.999 else None,
        'Gnl%s' % config['G_nl'],
        'Dnl%s' % config['D_nl'],
        'Ginit%s' % config['G_init'],
        'Dinit%s' % config['D_init'],
        'G%s' % config['G_param'] if config['G_param'] != 'SN' else None,
        'D%s' % config['D_param'] if config['D_param'] != 'SN' else None,
        'Gattn%s' % config['G_attn'] if config['G_attn'] != '0' else None,
        'Dattn%s' % config['D_attn'] if config['D_attn'] != '0' else None,
        'Gortho%2.1e' % config['G_ortho'] if config['G_ortho'] > 0.0 else None,
        'Dortho%2.1e' % config['D_ortho'] if config['D_ortho'] > 0.0 else None,
        config['norm_style'] if config['norm_style'] != 'bn' else None,
        'cr' if config['cross_replica'] else None,
        'Gshared' if config['G_shared'] else None,
        'hier' if config['hier'] else None,
        'ema' if config['ema'] else None,
        config['name_suffix'] if config['name_suffix'] else None,
    ] if item is not None])
    return hashname(name) if config['hashname'] else name


# ----------------------------------------------------------------------------
# Datasets.

class DatasetEntry:
    """One row of the dataset table."""

    def __init__(self, cls, root, resolution, n_classes, classes_per_sheet):
        self.cls, self.root = cls, root
        self.resolution, self.n_classes = resolution, n_classes
        self.classes_per_sheet = classes_per_sheet


# One table instead of the release's five parallel dicts (which are derived below for scripts
# that import them). cls names a class in datasets.py; root is relative to --data_root.
DATASETS = {
    'I32':       DatasetEntry('ImageFolder', 'ImageNet', 32, 1000, 50),
    'I64':       DatasetEntry('ImageFolder', 'ImageNet', 64, 1000, 50),
    'I128':      DatasetEntry('ImageFolder', 'ImageNet', 128, 1000, 20),
    'I256':      DatasetEntry('ImageFolder', 'ImageNet', 256, 1000, 20),
    'I32_hdf5':  DatasetEntry('ILSVRC_HDF5', 'ILSVRC32.hdf5', 32, 1000, 50),
    'I64_hdf5':  DatasetEntry('ILSVRC_HDF5', 'ILSVRC64.hdf5', 64, 1000, 50),
    'I128_hdf5': DatasetEntry('ILSVRC_HDF5', 'ILSVRC128.hdf5', 128, 1000, 20),
    'I256_hdf5': DatasetEntry('ILSVRC_HDF5', 'ILSVRC256.hdf5', 256, 1000, 20),
    'C10':       DatasetEntry('CIFAR10', 'cifar', 32, 10, 10),
    'C100':      DatasetEntry('CIFAR100', 'cifar', 32, 100, 100),
    'S32':       DatasetEntry('S32', 'S32', 32, 10, 10),
    'S32_hdf5':  DatasetEntry('ILSVRC_HDF5', 'S32.hdf5', 32, 10, 10),
}
dset_dict = {k: v.cls for k, v in DATASETS.items()}
imsize_dict = {k: v.resolution for k, v in DATASETS.items()}
root_dict = {k: v.root for k, v in DATASETS.items()}
nclass_dict = {k: v.n_classes for k, v in DATASETS.items()}
classes_per_sheet_dict = {k: v.classes_per_sheet for k, v in DATASETS.items()}


def classes_per_sheet(config):
    """Classes per class-sheet image: the table's, or up to 20 for a custom dataset."""
    entry = DATASETS.get(config['dataset'])
    return entry.classes_per_sheet if entry else min(20, config['n_classes'])


class CenterCropLongEdge(object):
    """Crop the central square whose side is the image's short edge."""

    def __call__(self, img):
        return transforms.functional.center_crop(img, min(img.size))

    def __repr__(self):
        return self.__class__.__name__


class RandomCropLongEdge(object):
    """Crop a square of side the short edge at a random offset along the long edge."""

    def __call__(self, img):
        size = (min(img.size), min(img.size))
        i = (0 if size[0] == img.size[0]
             else np.random.randint(low=0, high=img.size[0] - size[0]))
        j = (0 if size[1] == img.size[1]
             else np.random.randint(low=0, high=img.size[1] - size[1]))
        return transforms.functional.crop(img, j, i, size[0], size[1])

    def __repr__(self):
        return self.__class__.__name__


def dataset_source(config):
    """(datasets.py class, root path) for the configured dataset."""
    import datasets
    entry = DATASETS.get(config['dataset'])
    if config.get('dataset_root'):
        root = config['dataset_root']
        cls = 'ILSVRC_HDF5' if root.endswith(('.hdf5', '.h5')) else 'ImageFolder'
    else:
        root = os.path.join(config['data_root'], entry.root)
        cls = entry.cls
    return getattr(datasets, cls), root


def get_dataset(dataset, data_root='data', augment=False, load_in_mem=False, resolution=0,
                n_classes=0, dataset_root='', download=False, **kwargs):
    """The training set with the release's transforms, values in [-1, 1]."""
    config = {'dataset': dataset, 'data_root': data_root, 'dataset_root': dataset_root}
    which_dataset, root = dataset_source(config)
    image_size = resolution or DATASETS[dataset].resolution
    hdf5 = which_dataset.__name__ == 'ILSVRC_HDF5'
    small = dataset in ('C10', 'C100', 'S32')
    if hdf5:
        train_transform = None
    else:
        if augment:
            train_transform = ([transforms.RandomCrop(32, padding=4)] if small
                               else [RandomCropLongEdge(), transforms.Resize(image_size)])
            train_transform.append(transforms.RandomHorizontalFlip())
        else:
            train_transform = ([] if small
                               else [CenterCropLongEdge(), transforms.Resize(image_size)])
        train_transform = transforms.Compose(train_transform + [
            transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds_kwargs = {'index_filename': '%s_imgs.npz' % dataset}
    if n_classes and which_dataset.__name__ == 'ImageFolder':
        ds_kwargs['n_classes'] = n_classes
    if download:
        ds_kwargs['download'] = True
    return which_dataset(root=root, transform=train_transform, load_in_mem=load_in_mem,
                         **ds_kwargs)


# ----------------------------------------------------------------------------
# Loaders.

def epoch_order(n, epoch, seed, shuffle=True):
    """The sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


class EpochSampler(Sampler):
    """One epoch of indices from a given position, split across ranks.

    Unlike DataLoader's RandomSampler it draws nothing from the global RNG and can start
    mid-epoch, so a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, data_source, shuffle=True, seed=0, rank=0, world_size=1):
        self.n = len(data_source)
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        """Select the epoch, skipping the first `start` samples of this rank."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = epoch_order(self.n, self.epoch, self.seed, self.shuffle)
        order = order[:self.n - self.n % self.world_size]  # equal shares for every rank
        return iter(order[self.rank::self.world_size][self.start:])

    def __len__(self):
        return max(self.n // self.world_size - self.start, 0)


class MultiEpochSampler(Sampler):
    """Shuffled indices for all num_epochs epochs at once, starting start_itr batches in.

    Epochs are generated lazily, one seeded permutation each; ranks take interleaved samples
    of the global stream.
    """

    def __init__(self, data_source, num_epochs, start_itr=0, batch_size=128, seed=0, rank=0,
                 world_size=1):
        self.data_source = data_source
        self.num_samples = len(self.data_source)
        self.num_epochs = num_epochs
        self.start_itr = start_itr
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def _total(self):
        """Samples in the stream, trimmed to a multiple of the world size."""
        total = self.num_samples * self.num_epochs
        return total - total % self.world_size

    def __iter__(self):
        n, w = self.num_samples, self.world_size
        pos = self.start_itr * self.batch_size * w + self.rank
        epoch, order = -1, None
        while pos < self._total():
            if pos // n != epoch:
                epoch = pos // n
                order = epoch_order(n, epoch, self.seed)
            yield order[pos % n]
            pos += w

    def __len__(self):
        return max(self._total() // self.world_size - self.start_itr * self.batch_size, 0)


def get_data_loaders(dataset, data_root=None, augment=False, batch_size=64, num_workers=8,
                     shuffle=True, load_in_mem=False, hdf5=False, pin_memory=True,
                     drop_last=True, start_itr=0, num_epochs=500, use_multiepoch_sampler=False,
                     seed=0, rank=0, world_size=1, **kwargs):
    """A list holding the training loader, as the release returns it.

    With the multi-epoch sampler one pass covers every epoch; otherwise call
    `loader.sampler.set_epoch(epoch, start)` before each epoch.
    """
    import datasets
    train_set = get_dataset(dataset, data_root, augment, load_in_mem, **kwargs)
    # --augment already flips, so --mirror_augment adds a flip only without it.
    train_set = datasets.limit_data(train_set, kwargs.get('num_samples'),
                                    kwargs.get('mirror_augment') and not augment, seed)
    if use_multiepoch_sampler:
        sampler = MultiEpochSampler(train_set, num_epochs, start_itr, batch_size, seed, rank,
                                    world_size)
        drop_last = False
    else:
        sampler = EpochSampler(train_set, shuffle, seed, rank, world_size)
    # A private generator keeps worker seeding off the global RNG that training draws from.
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler,
                        num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
                        generator=torch.Generator().manual_seed(seed),
                        persistent_workers=False)
    return [loader]


# ----------------------------------------------------------------------------
# Distributed.

def setup_distributed(config):
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE in the environment).

    Returns (rank, world_size, device): NCCL and one GPU per process on CUDA, Gloo on CPU.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    device = pick_device(config.get('device', ''))
    if world_size == 1:
        return 0, 1, device
    import torch.distributed as dist
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return rank, world_size, device


def get_rank():
    """This process's rank; 0 without a process group."""
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    """Processes in the group; 1 without one."""
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_object(obj):
    """Rank 0's obj on every rank; obj itself without a process group."""
    if get_world_size() == 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] without a process group."""
    if get_world_size() == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------
# EMA and regularisers.

class ema(object):
    """Exponential moving average of every state-dict entry of source into target."""

    def __init__(self, source, target, decay=0.9999, start_itr=0):
        self.source = source
        self.target = target
        self.decay = decay
        self.start_itr = start_itr
        with torch.no_grad():
            for key, value in self.source.state_dict().items():
                self.target.state_dict()[key].copy_(value)

    @torch.no_grad()
    def update(self, itr=None):
        # Before ema_start the target tracks the source outright.
        decay = 0.0 if itr is not None and itr < self.start_itr else self.decay
        # The dicts are fetched afresh: .to(memory_format=...) or .to(device) swap the tensors
        # behind the parameters, and stale references would silently stop the average.
        source, target = self.source.state_dict(), self.target.state_dict()
        floats = [k for k, v in source.items() if v.is_floating_point()]
        targets = [target[k] for k in floats]
        torch._foreach_mul_(targets, decay)
        torch._foreach_add_(targets, [source[k] for k in floats], alpha=1 - decay)
        for k, v in source.items():
            if not v.is_floating_point():
                target[k].copy_(v)


class ema_losses(object):
    """Moving averages of the training losses and of D's mean outputs, as the LeCam fork keeps
    them: D_real and D_fake are the anchors losses.lecam_reg pulls D's outputs towards."""

    KEYS = ('G_loss', 'D_loss_real', 'D_loss_fake', 'D_real', 'D_fake')

    def __init__(self, init=1000., decay=0.9, start_itr=0):
        for key in self.KEYS:
            setattr(self, key, init)
        self.decay = decay
        self.start_itr = start_itr

    def update(self, cur, mode, itr):
        """Fold cur into the average named mode; before start_itr it simply becomes cur."""
        if mode not in self.KEYS:
            raise ValueError('ema_losses has no %r: use one of %s' % (mode, ', '.join(self.KEYS)))
        decay = 0.0 if itr < self.start_itr else self.decay
        setattr(self, mode, getattr(self, mode) * decay + cur * (1 - decay))

    def state_dict(self):
        """The averages as plain floats, for state_dict.pth."""
        return {key: float(getattr(self, key)) for key in self.KEYS}

    def load_state_dict(self, state):
        for key in self.KEYS:
            setattr(self, key, state[key])


def ortho_grad(w, strength, offdiag=True):
    """strength * gradient of 0.5 * ||W W^T (- I or masked diagonal)||_F^2 for a 2-D w."""
    gram = torch.mm(w, w.t())
    eye = torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
    gram = gram * (1. - eye) if offdiag else gram - eye
    return strength * 2 * torch.mm(gram, w)


@torch.no_grad()
def ortho(model, strength=1e-4, blacklist=()):
    """BigGAN's modified ortho reg: adds its gradient straight to .grad (no extra backward)."""
    for param in model.parameters():
        if len(param.shape) < 2 or param.grad is None or any(param is p for p in blacklist):
            continue
        w = param.reshape(param.shape[0], -1)  # channels_last weights too
        param.grad += ortho_grad(w, strength).view(param.shape)


@torch.no_grad()
def default_ortho(model, strength=1e-4, blacklist=()):
    """The classic ortho reg (penalises W W^T - I)."""
    for param in model.parameters():
        if len(param.shape) < 2 or param.grad is None or any(param is p for p in blacklist):
            continue
        w = param.reshape(param.shape[0], -1)
        param.grad += ortho_grad(w, strength, offdiag=False).view(param.shape)


def toggle_grad(model, on_or_off):
    model.requires_grad_(on_or_off)


# ----------------------------------------------------------------------------
# Checkpoints.

@contextlib.contextmanager
def atomic_open(path, mode='wb'):
    """Write to a temporary file beside path, then rename it over path, so a kill at any
    moment leaves either the old file or the new one, never a torn one."""
    tmp = '%s.tmp%d' % (path, os.getpid())
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save_all(items):
    """Write every (obj, path) to a temporary file first, then rename them all in a row, so
    the files of one checkpoint change together (a kill mid-write leaves the old set)."""
    tmps = []
    try:
        for obj, path in items:
            tmp = '%s.tmp%d' % (path, os.getpid())
            tmps.append((tmp, path))
            with open(tmp, 'wb') as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def is_plain(value):
    """Whether value is plain data, what weights_only loading accepts."""
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(is_plain(v) for v in value.values())
    return value is None or isinstance(value, (bool, int, float, str))


def plain_config(config):
    """config without its non-plain entries (the activation modules, re-derived from
    --G_nl/--D_nl when loaded)."""
    return {k: v for k, v in config.items() if is_plain(v)}


def get_rng_state():
    """Every RNG training draws from, as plain data (lists of numbers)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {'torch': torch.get_rng_state().tolist(),
             'numpy': [kind, keys.tolist(), pos, has_gauss, cached],
             'python': [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's device only: the count of visible GPUs may differ on resume.
        state['cuda'] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state):
    """Restore what get_rng_state captured (from a list of per-rank states, this rank's)."""
    if isinstance(state, list):
        if len(state) != get_world_size():
            print('note: the checkpoint was written by %d process(es), this run has %d: '
                  'random streams start afresh' % (len(state), get_world_size()))
            return
        state = state[get_rank()]
    torch.set_rng_state(torch.tensor(state['torch'], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state['cuda'], dtype=torch.uint8))


def checkpoint_path(weights_root, experiment_name, name, name_suffix=None):
    return '%s/%s/%s.pth' % (weights_root, experiment_name, join_strings('_', [name, name_suffix]))


def save_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None, G_ema=None):
    """Write G, G_optim, D, D_optim, state_dict and G_ema, each atomically.

    state_dict goes last and carries every rank's RNG state and a config of plain data, so the
    files load with weights_only=True. Under DDP every rank calls this; rank 0 writes.
    """
    rng = all_gather_objects(get_rng_state())
    if get_rank() != 0:
        return
    root = '/'.join([weights_root, experiment_name])
    os.makedirs(root, exist_ok=True)
    path = functools.partial(checkpoint_path, weights_root, experiment_name,
                             name_suffix=name_suffix)
    items = [(G.state_dict(), path('G')), (G.optim.state_dict(), path('G_optim')),
             (D.state_dict(), path('D')), (D.optim.state_dict(), path('D_optim'))]
    if G_ema is not None:
        items.append((G_ema.state_dict(), path('G_ema')))
    items.append(({**state_dict, 'config': plain_config(state_dict['config']), 'rng': rng},
                  path('state_dict')))
    atomic_save_all(items)


class ReleaseUnpickler(pickle.Unpickler):
    """Unpickles what the release's state_dict.pth holds and nothing else: plain data,
    nn.ReLU and OrderedDict, numpy float scalars (its best_IS/best_FID) and tensors.

    weights_only=True refuses such files: numpy scalars are not on its list, and PyTorch < 1.6
    (which the release ran on) saved the ReLU's class by a persistent id it does not accept.
    """
    ALLOWED = {('collections', 'OrderedDict'), ('torch.nn.modules.activation', 'ReLU'),
               ('_codecs', 'encode'),  # how pickle protocol 2 spells bytes
               ('__builtin__', 'set'), ('builtins', 'set'), ('builtins', 'frozenset'),
               ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
               ('numpy', 'dtype'), ('torch._utils', '_rebuild_tensor_v2'),
               ('torch._utils', '_rebuild_parameter'), ('torch', 'FloatStorage'),
               ('torch', 'DoubleStorage'), ('torch', 'LongStorage'), ('torch', 'IntStorage'),
               ('torch', 'ByteStorage'), ('torch', 'HalfStorage')}

    def find_class(self, module, name):
        if (module, name) == ('torch.nn.backends.thnn', '_get_thnn_function_backend'):
            return type(None)  # an nn.Module attribute of PyTorch 1.0, gone since
        if (module, name) in self.ALLOWED or module.startswith('numpy.dtypes'):
            return super().find_class(module, name)
        raise pickle.UnpicklingError('%s.%s is not allowed in a checkpoint' % (module, name))


class release_pickle:
    """The pickle module torch.load uses for the release's files (see ReleaseUnpickler)."""
    Unpickler = ReleaseUnpickler
    load = staticmethod(pickle.load)
    __name__ = 'release_pickle'


def torch_load(path, map_location='cpu'):
    """torch.load of tensors and plain data only: weights_only=True, falling back for the
    release's state_dict.pth to an unpickler that allows just what such a file holds."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        with torch.serialization.safe_globals([nn.ReLU]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        obj = torch.load(path, map_location=map_location, weights_only=False,
                         pickle_module=release_pickle)
        if isinstance(obj, dict):
            # numpy scalars become floats, so the state can be saved again as plain data.
            obj = {k: v.item() if isinstance(v, np.generic) else v for k, v in obj.items()}
        return obj


def check_shapes(module, loaded, path, strict=True):
    """One clear error when a checkpoint does not fit the model built from the flags."""
    own = module.state_dict()
    missing = [k for k in own if k not in loaded] if strict else []
    unexpected = [k for k in loaded if k not in own] if strict else []
    wrong = ['%s %s vs %s' % (k, tuple(loaded[k].shape), tuple(own[k].shape))
             for k in own if k in loaded and loaded[k].shape != own[k].shape]
    problems = (['shape mismatch (checkpoint vs config): ' + '; '.join(wrong[:3])] if wrong
                else [])
    problems += ['missing keys: ' + ', '.join(missing[:3])] if missing else []
    problems += ['unexpected keys: ' + ', '.join(unexpected[:3])] if unexpected else []
    if problems:
        raise ConfigError('%s does not match the model built from these flags (%s); pass the '
                          'flags the checkpoint was trained with' % (path, ' | '.join(problems)))


def load_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None, G_ema=None,
                 strict=True, load_optim=True):
    """Load what save_weights wrote (or the release wrote) into the given modules and dict.

    state_dict is updated in place except its 'config', which stays the current run's; an 'rng'
    entry comes back if the checkpoint has one (the release's do not). Returns the config the
    checkpoint was saved with (None if it has none).
    """
    path = functools.partial(checkpoint_path, weights_root, experiment_name,
                             name_suffix=name_suffix)
    if not os.path.exists(path('state_dict')) and not os.path.exists(path('G')):
        raise ConfigError('no checkpoint at %s: train first, or pass --weights_root/'
                          '--experiment_name/--load_weights naming an existing one'
                          % os.path.dirname(path('G')))
    loaded = {}
    for name, net in [('G', G), ('D', D), ('G_ema', G_ema)]:
        if net is not None:
            loaded[name] = torch_load(path(name))
            check_shapes(net, loaded[name], path(name), strict)
        if net is not None and load_optim and name != 'G_ema':
            loaded[name + '_optim'] = torch_load(path(name + '_optim'))
    saved = torch_load(path('state_dict'))
    # Everything is read before anything changes, so a bad file leaves the run untouched.
    for name, net in [('G', G), ('D', D), ('G_ema', G_ema)]:
        if net is not None:
            net.load_state_dict(loaded[name], strict=strict)
            if name + '_optim' in loaded:
                net.optim.load_state_dict(loaded[name + '_optim'])
    for key, value in saved.items():
        if key != 'config':
            state_dict[key] = value
    return saved.get('config')


# ----------------------------------------------------------------------------
# Logging.

class MetricsLogger(object):
    """Appends one JSON object per call to a .jsonl file."""

    def __init__(self, fname, reinitialize=False):
        self.fname = fname
        self.reinitialize = reinitialize
        if os.path.exists(self.fname) and self.reinitialize:
            os.remove(self.fname)

    def log(self, record=None, **kwargs):
        record = dict(record or {})
        record.update(kwargs)
        record['_stamp'] = time.time()
        with open(self.fname, 'a') as f:
            f.write(json.dumps(record, ensure_ascii=True) + '\n')


class MyLogger(object):
    """One plain-text file per metric, lines `itr: value` in logstyle (MATLAB-friendly)."""

    def __init__(self, fname, reinitialize=False, logstyle='%3.3f'):
        self.root = fname
        os.makedirs(self.root, exist_ok=True)
        self.reinitialize = reinitialize
        self.metrics = []
        self.logstyle = logstyle

    def reinit(self, item):
        """Delete a metric's old log when starting afresh."""
        path = '%s/%s.log' % (self.root, item)
        if os.path.exists(path) and self.reinitialize:
            os.remove(path)

    def log(self, itr, **kwargs):
        for arg in kwargs:
            if arg not in self.metrics:
                self.reinit(arg)
                self.metrics.append(arg)
            if self.logstyle in ('pickle', 'mat'):
                continue  # unsupported in the release too
            with open('%s/%s.log' % (self.root, arg), 'a') as f:
                f.write('%d: %s\n' % (itr, self.logstyle % kwargs[arg]))


def write_metadata(logs_root, experiment_name, config, state_dict):
    """metalog.txt: when, the config and the state of this run."""
    os.makedirs('%s/%s' % (logs_root, experiment_name), exist_ok=True)
    with atomic_open('%s/%s/metalog.txt' % (logs_root, experiment_name), 'w') as f:
        f.write('datetime: %s\n' % str(datetime.datetime.now()))
        f.write('config: %s\n' % str(config))
        f.write('state: %s\n' % str({k: v for k, v in state_dict.items() if k != 'rng'}))


class progress(object):
    """The release's progress line (count, percent, elapsed and ETA), plus the latest losses.

    displaytype 's1k' shows the time per 1000 iterations instead of the ETA.
    """

    def __init__(self, items, desc='', total=None, min_delay=0.1, displaytype='s1k', start=0,
                 file=None):
        self.items, self.desc = items, desc
        self.total = total or len(items)
        self.min_delay, self.displaytype, self.start = min_delay, displaytype, start
        self.file = file or sys.stdout
        self.postfix = ''

    def set_postfix(self, ordered_dict=None, **kwargs):
        metrics = {**(ordered_dict or {}), **kwargs}
        self.postfix = ', '.join('%s : %+4.3f' % (k, v) for k, v in metrics.items())  # release

    def __iter__(self):
        t_start, t_last = time.time(), 0
        count = 0  # items handed out; the last one counts as done once the caller stops
        try:
            for n, item in enumerate(self.items):
                t_now = time.time()
                if t_now - t_last > self.min_delay and n > 0:
                    self.show(n, t_now - t_start)
                    t_last = t_now
                count = n + 1
                yield item
        finally:
            # Also when the loop stops early (--total_itrs), the line ends.
            if count:
                self.show(count, time.time() - t_start, end='\n')

    def show(self, n, t_done, end=''):
        """Print the line for n items done in t_done seconds."""
        line = '\r%s%d/%d (%6.2f%%) ' % (self.desc, self.start + n, self.start + self.total,
                                          100.0 * n / max(self.total, 1))
        if self.displaytype == 's1k':
            t_1k = t_done / n * 1000
            line += '(TE/ET1k: %d:%02d / %d:%02d) ' % (divmod(t_done, 60) + divmod(t_1k, 60))
        else:
            t_left = t_done / n * (self.total - n)
            line += '(TE/ETA: %d:%02d / %d:%02d) ' % (divmod(t_done, 60) + divmod(t_left, 60))
        print(line + self.postfix, end=end, file=self.file, flush=True)


def get_SVs(net, prefix):
    """The logged singular values of every SN layer, keyed like the release's logs."""
    d = net.state_dict()
    return {('%s_%s' % (prefix, key)).replace('.', '_'): float(d[key].item())
            for key in d if 'sv' in key}


# ----------------------------------------------------------------------------
# Sampling.

def initiate_standing_stats(net):
    for module in net.modules():
        if hasattr(module, 'accumulate_standing'):
            module.reset_stats()
            module.accumulate_standing = True


@torch.no_grad()
def accumulate_standing_stats(net, z, y, nclasses, num_accumulations=16):
    """Replace running BN stats (mybn) by averages over num_accumulations fresh batches.

    z is refilled with its own sample_() when it has one, so --z_var is honoured.
    """
    initiate_standing_stats(net)
    net.train()
    for _ in range(num_accumulations):
        if hasattr(z, 'sample_'):
            z.sample_()
        else:
            z.normal_()
        y.random_(0, nclasses)
        net(z, net.shared(y))
    net.eval()


@contextlib.contextmanager
def sampling_state(*nets):
    """Sample inside without changing training: the RNGs, BN statistics, SN vectors and
    standing-stat switches of nets are restored on exit."""
    devices = sorted({p.device.index for n in nets for p in n.parameters()
                      if p.device.type == 'cuda'})
    saved = [{k: v.clone() for k, v in n.named_buffers()} for n in nets]
    modes = [(n.training, [(m, m.accumulate_standing) for m in n.modules()
                           if hasattr(m, 'accumulate_standing')]) for n in nets]
    import layers
    with torch.random.fork_rng(devices=devices), layers.local_batch_stats():
        try:
            yield
        finally:
            for net, buffers, (training, standing) in zip(nets, saved, modes):
                named = dict(net.named_buffers())
                with torch.no_grad():
                    for k, v in buffers.items():
                        named[k].copy_(v)
                net.train(training)
                for module, flag in standing:
                    module.accumulate_standing = flag


def autocast(device_type, dtype=None):
    """torch.autocast to dtype, or nothing when dtype is None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def amp_dtype(config):
    """The autocast dtype --amp asks for; None means float32."""
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(config.get('amp'))


def config_autocast(config):
    """autocast as --amp and --device ask."""
    return autocast(torch.device(config['device']).type, amp_dtype(config))


def run_G(G, z, y, parallel=False, embedded=False):
    """G(z, G.shared(y)) under no_grad (y used as is when already embedded), over the visible
    GPUs with DataParallel if asked."""
    with torch.no_grad():
        gy = y if embedded else G.shared(y)
        if parallel and torch.cuda.device_count() > 1 and z.is_cuda:
            return nn.parallel.data_parallel(G, (z, gy))
        return G(z, gy)


def sample(G, z_, y_, config):
    """A fresh batch from G: (images in [-1, 1], labels)."""
    z_.sample_()
    y_.sample_()
    return run_G(G, z_, y_, config['parallel']).float(), y_


def save_image(images, path, nrow):
    """torchvision's min-max normalised grid, written atomically as JPEG."""
    with atomic_open(path) as f:
        torchvision.utils.save_image(images.float().cpu(), f, nrow=nrow, normalize=True,
                                     format='JPEG')


def sample_sheet(G, classes_per_sheet, num_classes, samples_per_class, parallel, samples_root,
                 experiment_name, folder_number, z_=None):
    """Sheets of samples_per_class samples (columns) for classes_per_sheet classes (rows)."""
    device = next(G.parameters()).device
    folder = '%s/%s/%d' % (samples_root, experiment_name, folder_number)
    os.makedirs(folder, exist_ok=True)
    for i in range(math.ceil(num_classes / classes_per_sheet)):
        y = torch.arange(i * classes_per_sheet, min((i + 1) * classes_per_sheet, num_classes),
                         device=device)
        ims = []
        for _ in range(samples_per_class):
            if z_ is not None and hasattr(z_, 'sample_') and len(y) <= z_.size(0):
                z = z_.sample_()[:len(y)]
            else:
                z = torch.randn(len(y), G.dim_z, device=device)
            ims.append(run_G(G, z, y, parallel).float().cpu())
        out_ims = torch.stack(ims, 1).flatten(0, 1)  # (classes * samples, 3, H, W), row a class
        save_image(out_ims, '%s/samples%d.jpg' % (folder, i), nrow=samples_per_class)


def interp(x0, x1, num_midpoints):
    """num_midpoints + 2 points from x0 to x1 along dim 1: (N, 1, D) -> (N, M + 2, D)."""
    lerp = torch.linspace(0, 1.0, num_midpoints + 2, device=x0.device).to(x0.dtype)
    return x0 * (1 - lerp.view(1, -1, 1)) + x1 * lerp.view(1, -1, 1)


def sample_1hot(batch_size, num_classes, device='cpu'):
    """Random class indices (the release's name)."""
    return torch.randint(low=0, high=num_classes, size=(batch_size,), device=device,
                         dtype=torch.int64)


def interp_sheet(G, num_per_sheet, num_midpoints, num_classes, parallel, samples_root,
                 experiment_name, folder_number, sheet_number=0, fix_z=False, fix_y=False,
                 device=None):
    """Rows interpolating z, y or both between two random endpoints."""
    device = device or next(G.parameters()).device
    steps = num_midpoints + 2
    if fix_z:
        zs = torch.randn(num_per_sheet, 1, G.dim_z, device=device).repeat(1, steps, 1)
    else:
        zs = interp(torch.randn(num_per_sheet, 1, G.dim_z, device=device),
                    torch.randn(num_per_sheet, 1, G.dim_z, device=device), num_midpoints)
    with torch.no_grad():
        def embed():
            return G.shared(sample_1hot(num_per_sheet, num_classes, device)).view(
                num_per_sheet, 1, -1)
        ys = embed().repeat(1, steps, 1) if fix_y else interp(embed(), embed(), num_midpoints)
        # Without a shared embedding ys are class indices: one per image.
        ys = ys.view(num_per_sheet * steps, -1)
        ys = ys.view(-1) if not ys.is_floating_point() else ys
        out_ims = run_G(G, zs.view(-1, G.dim_z), ys, parallel, embedded=True)
    style = ('Z' if not fix_z else '') + ('Y' if not fix_y else '')
    folder = '%s/%s/%d' % (samples_root, experiment_name, folder_number)
    os.makedirs(folder, exist_ok=True)
    save_image(out_ims, '%s/interp%s%d.jpg' % (folder, style, sheet_number), nrow=steps)


# ----------------------------------------------------------------------------
# Latents.

def Distribution(tensor, dist_type, **kwargs):
    """Give a plain tensor the release's in-place `sample_()`.

    The release subclassed torch.Tensor, and the subclass leaked into every result; here the
    tensor stays a torch.Tensor and slicing or arithmetic on it gives ordinary tensors.
    dist_type 'normal' takes mean and var (used as the standard deviation, as in the release);
    'categorical' takes num_categories.
    """
    if dist_type == 'normal':
        tensor.sample_ = functools.partial(tensor.normal_, kwargs['mean'], kwargs['var'])
    elif dist_type == 'categorical':
        tensor.sample_ = functools.partial(tensor.random_, 0, kwargs['num_categories'])
    else:
        raise ValueError('unknown distribution %r' % dist_type)
    tensor.dist_type, tensor.dist_kwargs = dist_type, kwargs
    return tensor


def prepare_z_y(G_batch_size, dim_z, nclasses, device='cpu', fp16=False, z_var=1.0):
    """z_ (normal, std z_var) and y_ (uniform classes) buffers with sample_()."""
    # Drawn on the CPU and moved, as the release did: the device's generator is left
    # untouched, so every later z_/y_ draw on it matches the release's for the same seed.
    z = torch.randn(G_batch_size, dim_z).to(device, torch.float16 if fp16 else torch.float32)
    z_ = Distribution(z, 'normal', mean=0, var=z_var)
    y_ = Distribution(torch.zeros(G_batch_size, device=device, dtype=torch.int64),
                      'categorical', num_categories=nclasses)
    return z_, y_


def count_parameters(module):
    """Number of parameters in module."""
    return sum(p.numel() for p in module.parameters())
