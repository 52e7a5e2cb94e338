"""The command line: every flag of the release's parsers, the groups the other entry points
share, the one check of flag values, and the runner that turns bad input into one line.

Nothing here imports the project's other modules, so every file can use it.
"""
import math
import os
import re
import signal
import struct
import sys
import threading
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser, ArgumentTypeError


class ConfigError(ValueError):
    """Bad input from the user: entry points print its one-line message and exit with 2."""


class StopRun(RuntimeError):
    """The run cannot go on (it diverged, or a save failed); the message says what is left."""


class CollapseStop(StopRun):
    """The collapse watch ended the run (--on_collapse stop): its line, exit status 3."""
    exit_status = 3


def run_cli(run, parser, argv=None, namespace=False):
    """Parse argv (default: the command line) and call run(config) (run(args), the argparse
    namespace, with namespace: the tools').

    Bad input (a ConfigError), a run that cannot go on (StopRun) or a failing file system (an
    OSError: missing file, full disk, no permission) gets one line on stderr and exit status 2
    instead of a traceback; the collapse watch's stop (CollapseStop) gets its line and exit
    status 3. SIGTERM unwinds the stack like Ctrl-C, so temporary files are removed on the way
    out; either ends the process with 128 + the signal number, as the shell reports a signal.
    """
    config = parser.parse_args(argv) if namespace else vars(parser.parse_args(argv))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(config)
    except CollapseStop as e:
        print(one_line(e), file=sys.stderr)
        sys.exit(CollapseStop.exit_status)
    except (ConfigError, StopRun, OSError) as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        print(f'stopped by signal {signum}', file=sys.stderr)
        # What the unwinding leaves to clean up at exit (a DataLoader's killed workers) would
        # print 'Exception ignored in ...' tracebacks after the line: the stop is the news.
        sys.unraisablehook = _ignore_unraisable
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    """SIGTERM handler: unwind the stack as Ctrl-C does."""
    raise KeyboardInterrupt(signum)


# The top-level modules requirements.txt installs, as `import` names them.
REQUIREMENTS = ('torch', 'torchvision', 'numpy', 'h5py', 'scipy', 'tqdm', 'PIL', 'matplotlib')


def _ignore_unraisable(unraisable):
    """sys.unraisablehook once a run is stopped by a signal: nothing more to say."""


def _start_up_hook(kind, error, tb, report=sys.excepthook):
    """sys.excepthook for what ends an entry point before run_cli can catch it (during its
    imports): a Ctrl-C or SIGTERM is the same one line, the process still ending as by the
    signal; a requirement this Python lacks is one line and exit status 2."""
    if issubclass(kind, ModuleNotFoundError) and (error.name or '').split('.')[0] in REQUIREMENTS:
        print(f'error: {sys.executable} has no module {error.name!r}: install the requirements '
              f'into it (pip install -r requirements.txt) or run the Python they are installed '
              f'in (e.g. .venv/bin/python)', file=sys.stderr, flush=True)
        os._exit(2)
    if not issubclass(kind, KeyboardInterrupt):
        report(kind, error, tb)
        return
    signum = error.args[0] if error.args and isinstance(error.args[0], int) else signal.SIGINT
    print(f'stopped by signal {int(signum)}', file=sys.stderr, flush=True)
    if signum != signal.SIGINT:  # the interpreter ends an uncaught KeyboardInterrupt by SIGINT
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


# Entry points import this module first (their heavy imports take seconds); an interactive
# session keeps its tracebacks. SIGTERM unwinds from here on, as in run_cli, unless someone
# already handles it.
if not hasattr(sys, 'ps1') and not sys.flags.interactive:
    sys.excepthook = _start_up_hook
    if (signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGTERM, _raise_interrupt)


def one_line(error):
    """An exception's message on one line."""
    return ' '.join(str(error).split()) or type(error).__name__


# ----------------------------------------------------------------------------
# Arguments.

# Flags the release's entry points did not have; docs/training.md lists them.
ADDED_FLAGS = frozenset([
    '--device', '--no_toggle_grads', '--total_itrs', '--dataset_root', '--resolution',
    '--n_classes', '--download', '--chunk_window', '--amp', '--channels_last', '--compile',
    '--inception_backend', '--inception_weights', '--kid', '--kid_feats',  # + moments
    '--kid_subset_size', '--kid_subsets', '--per_class', '--metrics', '--prdc_k',
    '--intra_fid_per_class',
    '--tensorboard', '--truncation',
    # the DiffAugment and LeCam forks' flags
    '--DiffAugment', '--CR', '--CR_augment', '--num_samples', '--mirror_augment', '--LC',
    '--LC_ema_decay', '--LC_start',
    '--R1', '--R1_every',
    '--collapse_watch', '--on_collapse', '--collapse_lr_scale', '--max_rollbacks',
    '--compression_filter', '--skip_bad', '--output', '--no_progress'])  # make_hdf5.py


# How a run is measured rather than what it trained: sample.py and evaluate.py take these from
# their command line even under --config_from_name, so a checkpoint's stored config cannot
# change the protocol a user asked for (or its cost: counts, subsets, k).
MEASUREMENT_FLAGS = ('inception_backend', 'inception_weights', 'num_inception_images', 'no_fid',
                     'kid', 'kid_feats', 'kid_subset_size', 'kid_subsets', 'metrics', 'prdc_k',
                     'intra_fid_per_class')


class ToolParser(ArgumentParser):
    """ArgumentParser whose refusals are one line and exit status 2, as every other refusal:
    argparse's usage text first would be 59 lines for train.py's flags."""

    def error(self, message):
        self.exit(2, f'error: {" ".join(message.split())} (see --help)\n')


class ReleaseParser(ToolParser):
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


# Every flag of train.py and sample.py, defined once: name -> add_argument keywords. Other
# entry points take the ones they share by name (add_flags), with their own defaults.
TRAIN_FLAGS = {
    # Dataset/Dataloader.
    '--dataset': dict(type=str, default='I128_hdf5',
                      help='Dataset name from the table in datasets.py (I32..I256[_hdf5], C10,'
                           ' C100, S32), or any name with --dataset_root, --resolution and'
                           ' --n_classes'),
    '--augment': dict(action='store_true', default=False,
                      help='Augment with random crops and flips'),
    '--num_workers': dict(type=int, default=8, help='Number of dataloader workers'),
    '--no_pin_memory': dict(action='store_false', dest='pin_memory', default=True,
                            help='Pin data into memory through dataloader?'),
    '--shuffle': dict(action='store_true', default=False,
                      help='Shuffle the data (strongly recommended)?'),
    '--load_in_mem': dict(action='store_true', default=False, help='Load all data into memory?'),
    '--use_multiepoch_sampler': dict(action='store_true', default=False,
                                     help='Use one sampler over all epochs'),
    # Model.
    '--model': dict(type=str, default='BigGAN', help='Model module: BigGAN or BigGANdeep'),
    '--G_param': dict(type=str, default='SN', help='Parameterization style for G: SN or plain'),
    '--D_param': dict(type=str, default='SN', help='Parameterization style for D: SN or plain'),
    '--G_ch': dict(type=int, default=64, help='Channel multiplier for G'),
    '--D_ch': dict(type=int, default=64, help='Channel multiplier for D'),
    '--G_depth': dict(type=int, default=1, help='Resblocks per stage in G (BigGANdeep)'),
    '--D_depth': dict(type=int, default=1, help='Resblocks per stage in D (BigGANdeep)'),
    '--D_thin': dict(action='store_false', dest='D_wide', default=True,
                     help='Use the SN-GAN channel pattern for D (stores False into D_wide)'),
    '--G_shared': dict(action='store_true', default=False,
                       help='Use a shared class embedding in G'),
    '--shared_dim': dict(type=int, default=0, help="G's shared embedding size; 0 means dim_z"),
    '--dim_z': dict(type=int, default=128, help='Noise dimensionality'),
    '--z_var': dict(type=float, default=1.0,
                    help='Standard deviation of z (the release passes it as the std)'),
    '--hier': dict(action='store_true', default=False, help='Use hierarchical z in G'),
    '--cross_replica': dict(action='store_true', default=False,
                            help='Synchronise batch-norm statistics across DDP ranks'),
    '--mybn': dict(action='store_true', default=False,
                   help="Use the release's BN, which supports standing stats"),
    '--G_nl': dict(type=str, default='relu', help='Activation function for G'),
    '--D_nl': dict(type=str, default='relu', help='Activation function for D'),
    '--G_attn': dict(type=str, default='64',
                     help="Resolutions with attention in G, '_'-separated; '0' none"),
    '--D_attn': dict(type=str, default='64',
                     help="Resolutions with attention in D, '_'-separated; '0' none"),
    '--norm_style': dict(type=str, default='bn',
                         help='Normalizer style for G: bn, in, gn or nonorm'),
    # Model init.
    '--seed': dict(type=int, default=0, help='Random seed'),
    '--G_init': dict(type=str, default='ortho', help='Init style for G: ortho, N02, glorot/xavier'),
    '--D_init': dict(type=str, default='ortho', help='Init style for D'),
    '--skip_init': dict(action='store_true', default=False,
                        help='Skip initialization, ideal for testing'),
    # Optimizer.
    '--G_lr': dict(type=float, default=5e-5, help='Learning rate for G'),
    '--D_lr': dict(type=float, default=2e-4, help='Learning rate for D'),
    '--G_B1': dict(type=float, default=0.0, help='Beta1 for G'),
    '--D_B1': dict(type=float, default=0.0, help='Beta1 for D'),
    '--G_B2': dict(type=float, default=0.999, help='Beta2 for G'),
    '--D_B2': dict(type=float, default=0.999, help='Beta2 for D'),
    # Batch size, parallel, and precision.
    '--batch_size': dict(type=int, default=64, help='Default overall batch size, per process'),
    '--G_batch_size': dict(type=int, default=0, help='Batch size to use for G; 0 means same as D'),
    '--num_G_accumulations': dict(type=int, default=1,
                                  help="Number of passes to accumulate G's gradients over"),
    '--num_D_steps': dict(type=int, default=2, help='Number of D steps per G step'),
    '--num_D_accumulations': dict(type=int, default=1,
                                  help="Number of passes to accumulate D's gradients over"),
    '--split_D': dict(action='store_true', default=False,
                      help='Run D twice rather than concatenating inputs?'),
    '--num_epochs': dict(type=int, default=100, help='Number of epochs to train for'),
    '--parallel': dict(action='store_true', default=False,
                       help='Train with nn.DataParallel over the visible GPUs'),
    '--G_fp16': dict(action='store_true', default=False,
                     help='Train G in fp16 (mapped to --amp fp16)'),
    '--D_fp16': dict(action='store_true', default=False,
                     help='Train D in fp16 (mapped to --amp fp16)'),
    '--D_mixed_precision': dict(action='store_true', default=False,
                                help='Mixed precision in D (mapped to --amp fp16)'),
    '--G_mixed_precision': dict(action='store_true', default=False,
                                help='Mixed precision in G (mapped to --amp fp16)'),
    '--accumulate_stats': dict(action='store_true', default=False,
                               help='Accumulate "standing" batchnorm stats?'),
    '--num_standing_accumulations': dict(type=int, default=16,
                                         help='Number of forward passes to use in accumulating '
                                              'standing stats?'),
    # Bookkeeping.
    '--G_eval_mode': dict(action='store_true', default=False,
                          help='Run G in eval mode (running/standing stats?) at sample/test time?'),
    '--save_every': dict(type=int, default=2000, help='Save every X iterations; 0 never'),
    '--num_save_copies': dict(type=int, default=2, help='How many copies to save'),
    '--num_best_copies': dict(type=int, default=2,
                              help='How many previous best checkpoints to save'),
    '--which_best': dict(type=str, default='IS',
                         help='Which metric to use to determine when to save new "best" '
                              'checkpoints: IS or FID (the release\'s), or KID, precision, '
                              'recall, density, coverage, intraFID when --metrics computes it'),
    '--no_fid': dict(action='store_true', default=False, help='Calculate IS only, not FID?'),
    '--test_every': dict(type=int, default=5000, help='Test every X iterations; 0 never'),
    '--num_inception_images': dict(type=int, default=50000,
                                   help='Number of samples to compute inception metrics with'),
    '--hashname': dict(action='store_true', default=False,
                       help='Use a stable hash of the experiment name instead of the full config'),
    '--base_root': dict(type=str, default='',
                        help='Default location to store all weights, samples, data, and logs'),
    '--data_root': dict(type=str, default='data', help='Default location where data is stored'),
    '--weights_root': dict(type=str, default='weights', help='Default location to store weights'),
    '--logs_root': dict(type=str, default='logs', help='Default location to store logs'),
    '--samples_root': dict(type=str, default='samples', help='Default location to store samples'),
    '--pbar': dict(type=str, default='mine',
                   help='Type of progressbar to use; one of "mine" or "tqdm"'),
    '--name_suffix': dict(type=str, default='',
                          help='Suffix for experiment name for loading weights for sampling '
                               '(consider "best0")'),
    '--experiment_name': dict(type=str, default='',
                              help='Optionally override the automatic experiment naming with this'
                                   ' arg.'),
    '--config_from_name': dict(action='store_true', default=False,
                               help='Use a hash of the experiment name instead of the full config'),
    # EMA.
    '--ema': dict(action='store_true', default=False, help="Keep an ema of G's weights?"),
    '--ema_decay': dict(type=float, default=0.9999, help='EMA decay rate'),
    '--use_ema': dict(action='store_true', default=False,
                      help='Use the EMA parameters of G for evaluation?'),
    '--ema_start': dict(type=int, default=0, help='When to start updating the EMA weights'),
    # Numerical precision and SV stuff.
    '--adam_eps': dict(type=float, default=1e-8, help='epsilon value to use for Adam'),
    '--BN_eps': dict(type=float, default=1e-5, help='epsilon value to use for BatchNorm'),
    '--SN_eps': dict(type=float, default=1e-8, help='epsilon value to use for Spectral Norm'),
    '--num_G_SVs': dict(type=int, default=1, help='Number of SVs to track in G'),
    '--num_D_SVs': dict(type=int, default=1, help='Number of SVs to track in D'),
    '--num_G_SV_itrs': dict(type=int, default=1, help='Number of SV itrs in G'),
    '--num_D_SV_itrs': dict(type=int, default=1, help='Number of SV itrs in D'),
    # Ortho reg.
    '--G_ortho': dict(type=float, default=0.0, help='Modified ortho reg coefficient in G'),
    '--D_ortho': dict(type=float, default=0.0, help='Modified ortho reg coefficient in D'),
    '--toggle_grads': dict(action='store_true', default=True,
                           help='Toggle D and G\'s "requires_grad" settings when not training '
                                'them?'),
    '--no_toggle_grads': dict(action='store_false', dest='toggle_grads',
                              help='Keep requires_grad on for both networks throughout the step'),
    # Which train function.
    '--which_train_fn': dict(type=str, default='GAN', help='How2trainyourbois'),
    # Resume training.
    '--load_weights': dict(type=str, default='',
                           help='Suffix for which weights to load (e.g. best0, copy0)'),
    '--resume': dict(action='store_true', default=False, help='Resume training?'),
    # Log stuff.
    '--logstyle': dict(type=str, default='%3.3e',
                       help='What style to use when logging training metrics? One of: %%#.#f/ '
                            '%%#.#e (float/exp, text), pickle (python pickle), npz (numpy zip), '
                            'mat (MATLAB .mat file)'),
    '--log_G_spectra': dict(action='store_true', default=False,
                            help='Log the top 3 singular values in each SN layer in G?'),
    '--log_D_spectra': dict(action='store_true', default=False,
                            help='Log the top 3 singular values in each SN layer in D?'),
    '--sv_log_interval': dict(type=int, default=10,
                              help='Iteration interval for logging singular values'),
    # Added by this rebuild.
    '--device': dict(type=str, default='',
                     help="Device to run on, e.g. cpu, cuda, cuda:1; '' picks CUDA when "
                          'available, else CPU'),
    '--dataset_root': dict(type=str, default='',
                           help='Image folder (root/<class>/<image>) or HDF5 file of a dataset '
                                "not in the table, or to read instead of the table's"),
    '--resolution': dict(type=int, default=0,
                         help="Image resolution of a custom dataset; 0 takes the table's"),
    '--n_classes': dict(type=int, default=0,
                        help="Class count of a custom dataset; 0 takes the table's"),
    '--download': dict(action='store_true', default=False,
                       help='Let torchvision download CIFAR when its files are missing'),
    '--chunk_window': dict(type=int, default=0,
                           help='Chunk-aware shuffling for HDF5 files with big compressed '
                                'chunks: shuffle the chunks, then the images within each '
                                'window of this many chunks (each loader worker caches a '
                                'window); 0 shuffles fully'),
    '--total_itrs': dict(type=int, default=0,
                         help='Stop after this many iterations in all; 0 runs num_epochs'),
    '--amp': dict(type=str, default='', choices=['', 'bf16', 'fp16'],
                  help="Mixed precision through torch.autocast ('': float32); fp16 adds a "
                       'GradScaler'),
    '--channels_last': dict(action='store_true', default=False,
                            help='Use channels_last memory format for G and D'),
    '--compile': dict(action='store_true', default=False, help='torch.compile G and D'),
    '--inception_backend': dict(type=str, default='torchvision',
                                choices=['torchvision', 'tf_fid'],
                                help="torchvision (the release's, not comparable to published "
                                     'numbers) or tf_fid (the TF-ported FID Inception published '
                                     'FIDs use)'),
    '--inception_weights': dict(type=str, default='',
                                help="Local file with the Inception weights ('': torch hub's "
                                     'cache)'),
    '--kid': dict(action='store_true', default=False, help='Also report KID beside FID'),
    '--kid_subset_size': dict(type=int, default=1000,
                              help='Rows per KID subset, from the fakes and the real features '
                                   'alike; refused when either has fewer'),
    '--kid_subsets': dict(type=int, default=100, help='Number of KID subsets averaged'),
    '--metrics': dict(type=str, default='IS,FID',
                      help='Metrics each test computes, comma-separated, of IS, FID, KID, '
                           'PRDC (precision, recall, density, coverage), intraFID; --no_fid '
                           'removes FID and --kid adds KID'),
    '--prdc_k': dict(type=int, default=5,
                     help="PRDC's nearest_k: the k of the k-NN balls"),
    '--intra_fid_per_class': dict(type=int, default=50,
                                  help='Fakes per class for intraFID (against '
                                       'calculate_inception_moments.py --per_class moments)'),
    '--tensorboard': dict(action='store_true', default=False,
                          help='Also write losses, metrics, singular values, learning rates, '
                               'images/s and sample sheets for TensorBoard to '
                               'logs_root/experiment_name/tb (needs the tensorboard package)'),
    # The DiffAugment (mit-han-lab/data-efficient-gans) and LeCam (google/lecam-gan) forks'
    # flags, with their types and defaults; docs/little_data.md.
    '--DiffAugment': dict(type=str, default='',
                          help='DiffAugment policy: comma-separated names from color, '
                               "translation, cutout, applied to D's inputs in both steps "
                               "('': off)"),
    '--CR': dict(type=float, default=0,
                 help='Consistency regularisation weight (CR-BigGAN); 0: off'),
    '--CR_augment': dict(type=str, default='flip,translation',
                         help="Augmentation of the reals for --CR: an optional 'flip,' prefix "
                              "(random h-flip), then a DiffAugment policy; '' compares with "
                              'the un-augmented reals'),
    '--num_samples': dict(type=int, default=None,
                          help='Train on a seeded (--seed) random subset of this many images '
                               'of the training set (None: all)'),
    '--mirror_augment': dict(action='store_true', default=False,
                             help='Augment the data with random horizontal flips only'),
    '--LC': dict(type=float, default=0, help='LeCam regularisation weight; 0: off'),
    '--LC_ema_decay': dict(type=float, default=0.9,
                           help="Decay of the moving averages of D's outputs that LeCam "
                                'anchors to'),
    '--LC_start': dict(type=int, default=1000,
                       help='LeCam applies after this iteration; before it the anchors are the '
                            'latest batch means'),
    '--R1': dict(type=float, default=0,
                 help='R1 gradient penalty weight gamma: gamma/2 * E||grad_x D(x)||^2 over the '
                      'real images, added to D loss; 0: off'),
    '--R1_every': dict(type=int, default=1,
                       help='Lazy R1 (as StyleGAN2): only every this many iterations, weighted '
                            'this many times'),
    # The collapse watch (collapse.py, docs/collapse.md).
    '--collapse_watch': dict(action='store_true', default=False,
                             help='Judge the losses, singular values (logged every 10 '
                                  'iterations) and FIDs for a collapse as the run goes, and keep '
                                  'the last healthy checkpoint as the _healthy set'),
    '--on_collapse': dict(type=str, default='warn', choices=['warn', 'stop', 'rollback'],
                          help='What --collapse_watch does at a collapse: warn (one line and a '
                               'jsonl record), stop (the line, exit status 3) or rollback '
                               '(reload the _healthy set with lower learning rates)'),
    '--collapse_lr_scale': dict(type=float, default=0.5,
                                help='Factor both learning rates are multiplied by at each '
                                     'rollback'),
    '--max_rollbacks': dict(type=int, default=3,
                            help='Rollbacks allowed in a run; the next collapse stops it (exit '
                                 'status 3)'),
}

SAMPLE_FLAGS = {
    '--sample_npz': dict(action='store_true', default=False,
                         help='Sample "sample_num_npz" images and save to npz?'),
    '--sample_num_npz': dict(type=int, default=50000,
                             help='Number of images to sample when sampling NPZs'),
    '--sample_sheets': dict(action='store_true', default=False,
                            help='Produce class-conditional sample sheets and stick them in the '
                                 'samples root?'),
    '--sample_interps': dict(action='store_true', default=False,
                             help='Produce interpolation sheets and stick them in the samples '
                                  'root?'),
    '--sample_sheet_folder_num': dict(type=int, default=-1,
                                      help='Number to use for the folder for these sample sheets'),
    '--sample_random': dict(action='store_true', default=False,
                            help='Produce a single random sheet?'),
    '--sample_trunc_curves': dict(type=str, default='',
                                  help='Get inception metrics with a range of variances? To use '
                                       'this, specify a startpoint, step, and endpoint, e.g. '
                                       '--sample_trunc_curves 0.2_0.1_1.0 for a startpoint of '
                                       '0.2, endpoint of 1.0, and stepsize of 1.0.  Note that '
                                       'this is not exactly identical to using '
                                       'tf.truncated_normal, but should have approximately the '
                                       'same effect.'),
    '--sample_inception_metrics': dict(action='store_true', default=False,
                                       help='Calculate Inception metrics with sample.py?'),
    '--truncation': dict(type=float, default=0.0,
                         help='Draw z as truncation x a normal truncated to [-2, 2], as the '
                              'official BigGAN models are sampled, for every output (replaces '
                              '--z_var; 0: normal z with std --z_var)'),
}
# Rows of real pool features a moments file stores for KID by default (inception_utils' too).
DEFAULT_KID_FEATS = 10000
# The release's HDF5 chunk length along the image axis (make_hdf5.py's too).
RELEASE_CHUNK = 500
# Flags of one tool each, in the table so that DOMAINS checks them like the rest.
TOOL_FLAGS = {
    '--kid_feats': dict(type=int, default=DEFAULT_KID_FEATS,  # calculate_inception_moments.py
                        help='Real pool features stored for KID; 0 stores none'),
    '--per_class': dict(action='store_true', default=False,  # calculate_inception_moments.py
                        help="Also write each class's moments, for intra-FID, to "
                             '{dataset}_inception_moments_per_class.hdf5'),
    '--chunk_size': dict(type=int, default=None,  # make_hdf5.py
                         help='HDF5 chunk length along the image axis; default '
                              f"{RELEASE_CHUNK} (the release's) uncompressed; with "
                              '--compression, as many images as fit in 32 KB (at least 1), '
                              'so that a shuffled read decompresses little more than its image'),
}
FLAGS = {**TRAIN_FLAGS, **SAMPLE_FLAGS, **TOOL_FLAGS}
CUSTOM_DATASET_FLAGS = ('--dataset_root', '--resolution', '--n_classes')


def add_flags(parser, names, **defaults):
    """Add the named flags' definitions to parser, with some defaults changed."""
    for name in names:
        parser.add_argument(name, **FLAGS[name])
    parser.set_defaults(**defaults)
    return parser


def new_parser(description):
    """A ReleaseParser whose help shows every default."""
    return ReleaseParser(description=description, formatter_class=ArgumentDefaultsHelpFormatter)


def prepare_parser():
    """The release's training parser, flag for flag, plus this rebuild's additions."""
    return add_flags(new_parser('Parser for all scripts.'), TRAIN_FLAGS)


def add_sample_parser(parser):
    """Flags only sample.py has."""
    return add_flags(parser, SAMPLE_FLAGS)


# ----------------------------------------------------------------------------
# Values.

# The domain of every numeric flag, checked once before anything runs. Bounds read
# '>= 1', '> 0' or an interval '[0, 1)'.
DOMAINS = {
    'num_workers': '>= 0', 'G_ch': '>= 1', 'D_ch': '>= 1',
    # Blocks per stage: sizing the model builds each one (on the meta device), so a depth of
    # 10^8 would take minutes before any refusal; BigGAN-deep's own are 2.
    'G_depth': '[1, 1000]', 'D_depth': '[1, 1000]',
    'shared_dim': '>= 0', 'dim_z': '>= 1', 'z_var': '> 0', 'seed': '[0, 4294967295]',
    'G_lr': '>= 0', 'D_lr': '>= 0', 'G_B1': '[0, 1)', 'D_B1': '[0, 1)', 'G_B2': '[0, 1)',
    'D_B2': '[0, 1)', 'batch_size': '>= 1', 'G_batch_size': '>= 0',
    'num_G_accumulations': '>= 1', 'num_D_steps': '>= 1', 'num_D_accumulations': '>= 1',
    'num_epochs': '>= 1', 'num_standing_accumulations': '>= 1', 'save_every': '>= 0',
    'num_save_copies': '>= 0', 'num_best_copies': '>= 0', 'test_every': '>= 0',
    'num_inception_images': '>= 1', 'ema_decay': '[0, 1]', 'ema_start': '>= 0',
    'adam_eps': '> 0', 'BN_eps': '> 0', 'SN_eps': '> 0', 'num_G_SVs': '>= 1',
    'num_D_SVs': '>= 1', 'num_G_SV_itrs': '>= 1', 'num_D_SV_itrs': '>= 1', 'G_ortho': '>= 0',
    'D_ortho': '>= 0', 'sv_log_interval': '>= 0', 'total_itrs': '>= 0', 'resolution': '>= 0',
    'n_classes': '>= 0', 'sample_num_npz': '>= 1', 'truncation': '>= 0', 'kid_feats': '>= 0',
    'chunk_size': '>= 1', 'chunk_window': '>= 0', 'CR': '>= 0', 'LC': '>= 0',
    'LC_ema_decay': '[0, 1]', 'num_samples': '>= 1', 'kid_subset_size': '>= 2',
    'kid_subsets': '>= 1', 'R1': '>= 0', 'R1_every': '>= 1', 'collapse_lr_scale': '(0, 1]',
    'max_rollbacks': '>= 0', 'prdc_k': '>= 1', 'intra_fid_per_class': '>= 2',
}
# The root folders every path is built under (--base_root, '' for none, is not one).
ROOTS = ('data_root', 'weights_root', 'logs_root', 'samples_root')
# Flags whose value must be one of a list (the rest of the strings are free-form).
# The release read any other --G_param as plain, --pbar as tqdm and --which_train_fn as the
# dummy step, so those stay free-form.
CHOICES = {'model': ('BigGAN', 'BigGANdeep'),
           'which_best': ('IS', 'FID', 'KID', 'precision', 'recall', 'density', 'coverage',
                          'intraFID')}

# Strings of a fixed shape: the models parse --G_attn/--D_attn as '_'-separated integers and
# --norm_style by its prefix, and every .log line goes through --logstyle's %-format, so its
# width and precision are capped at two digits to keep a line short.
PATTERNS = {
    'G_attn': (r'\d+(_\d+)*', "resolutions joined by '_', e.g. 64 or 32_64; 0 for none"),
    'D_attn': (r'\d+(_\d+)*', "resolutions joined by '_', e.g. 64 or 32_64; 0 for none"),
    'norm_style': (r'bn|in|nonorm|gn|gn_ch_[1-9]\d*|gn_grp_[1-9]\d*',
                   'bn, in, nonorm, gn, gn_ch_N or gn_grp_N'),
    'logstyle': (r'pickle|npz|mat|%[-+ #0]?\d{0,2}(\.\d{1,2})?[eEfFgGdis]',
                 'one %-format of a number such as %3.3e (width and precision up to 2 digits), '
                 'pickle, npz or mat'),
}


# Flags that act only through another one: flag -> (what it acts through, whether that is on).
# Given alone they change nothing, which train.py says in one note each, as the release's
# launch scripts may pass them unconditionally.
ACTS_THROUGH = {
    'LC_start': ('--LC > 0', lambda c: c['LC'] > 0),
    'LC_ema_decay': ('--LC > 0', lambda c: c['LC'] > 0),
    'R1_every': ('--R1 > 0', lambda c: c['R1'] > 0),
    'CR_augment': ('--CR > 0', lambda c: c['CR'] > 0),
    'ema_decay': ('--ema', lambda c: c['ema']),
    'ema_start': ('--ema', lambda c: c['ema']),
    'use_ema': ('--ema', lambda c: c['ema']),
    'G_depth': ('--model BigGANdeep', lambda c: c['model'] == 'BigGANdeep'),
    'D_depth': ('--model BigGANdeep', lambda c: c['model'] == 'BigGANdeep'),
    'shared_dim': ('--G_shared', lambda c: c['G_shared']),
    'num_standing_accumulations': ('--accumulate_stats', lambda c: c['accumulate_stats']),
    # The release's fp16 flags mean --amp fp16, which an explicit --amp bf16 overrides.
    'G_fp16': ('--amp fp16 (here --amp bf16)', lambda c: c.get('amp') != 'bf16'),
    'D_fp16': ('--amp fp16 (here --amp bf16)', lambda c: c.get('amp') != 'bf16'),
    'G_mixed_precision': ('--amp fp16 (here --amp bf16)', lambda c: c.get('amp') != 'bf16'),
    'D_mixed_precision': ('--amp fp16 (here --amp bf16)', lambda c: c.get('amp') != 'bf16'),
    'num_save_copies': ('--save_every > 0', lambda c: c['save_every'] > 0),
    'num_best_copies': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'which_best': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'num_inception_images': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'collapse_lr_scale': ('--collapse_watch --on_collapse rollback',
                          lambda c: c['collapse_watch'] and c['on_collapse'] == 'rollback'),
    'max_rollbacks': ('--collapse_watch --on_collapse rollback',
                      lambda c: c['collapse_watch'] and c['on_collapse'] == 'rollback'),
    # What only a test computes, and the metrics' own settings.
    'metrics': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'kid': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'no_fid': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'inception_backend': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'inception_weights': ('--test_every > 0', lambda c: c['test_every'] > 0),
    'kid_subset_size': ('KID among the metrics (--kid) and --test_every > 0',
                        lambda c: _tested(c, 'KID')),
    'kid_subsets': ('KID among the metrics (--kid) and --test_every > 0',
                    lambda c: _tested(c, 'KID')),
    'prdc_k': ('PRDC among --metrics and --test_every > 0', lambda c: _tested(c, 'PRDC')),
    'intra_fid_per_class': ('intraFID among --metrics and --test_every > 0',
                            lambda c: _tested(c, 'intraFID')),
    'chunk_window': ('an HDF5 training set, shuffled (--shuffle or --use_multiepoch_sampler)',
                     lambda c: (c['shuffle'] or c['use_multiepoch_sampler']) and _reads_hdf5(c)),
}

# Free-form strings the release read by one value, any other falling back to a meaning
# (kept, since launch scripts may carry them): flag -> (the values read as named, the
# fallback's meaning).
RELEASE_READINGS = {
    'pbar': (('mine', 'tqdm'), 'tqdm bar'),
    'G_param': (('SN', 'plain'), 'plain layers, without spectral norm'),
    'D_param': (('SN', 'plain'), 'plain layers, without spectral norm'),
    'which_train_fn': (('GAN',), 'dummy step, which trains nothing'),
}


def _tested(config, metric):
    """Whether the run's tests compute metric."""
    from inception_utils import select_metrics  # the metrics' home; torch is loaded by now
    return config['test_every'] > 0 and metric in select_metrics(
        config['metrics'], config['no_fid'], config['kid'])


def _reads_hdf5(config):
    """Whether the run trains from an HDF5 file."""
    from datasets import ILSVRC_HDF5, dataset_source
    return dataset_source(config)[0] is ILSVRC_HDF5


def inert_flags(config):
    """One note per flag that does not do what a user would read in it: a flag of
    ACTS_THROUGH given a value other than its default while what it acts through is off, a
    RELEASE_READINGS string outside the values it names."""
    notes = []
    for key, (through, on) in ACTS_THROUGH.items():
        default = FLAGS[f'--{key}'].get('default')
        if key in config and config[key] != default and not on(config):
            given = f'--{key}' if config[key] is True else f'--{key} {config[key]}'
            notes.append(f'note: {given} has no effect without {through}')
    for key, (named, fallback) in RELEASE_READINGS.items():
        if key in config and config[key] not in named:
            notes.append(f"note: --{key} {config[key]!r} is none of {', '.join(named)}: read "
                         f'as the {fallback}, as the release read any other value')
    return notes


def bounded(kind, domain):
    """An argparse type: kind (int or float) parsed, then held to a DOMAINS-style bound, so
    the tools refuse a count they cannot use with argparse's one line, exit status 2."""
    def parse(text):
        value = kind(text)
        if not in_domain(value, domain):
            raise ArgumentTypeError(f'must be {domain}, got {text}')
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its 'invalid value' line
    parse.domain = domain
    return parse


def _value_types(spec):
    """The Python types a flag's value may have, or None where its parser is a function."""
    if spec.get('action') in ('store_true', 'store_false'):
        return (bool,)
    kind = spec.get('type', str)
    types = {int: (int,), float: (int, float), str: (str,)}.get(kind)
    return types and types + ((type(None),) if spec.get('default') is None else ())


# Each flag's config key (its dest) -> the types its value may have.
VALUE_TYPES = {spec.get('dest', name[2:]): _value_types(spec) for name, spec in FLAGS.items()}


def check_types(config, source):
    """Refuse a config read from a file (source) whose flag values are not of their flags'
    types: a stored config reaches the models and the domain checks unparsed."""
    for key, value in config.items():
        types = VALUE_TYPES.get(key)
        if types and (not isinstance(value, types)
                      or isinstance(value, bool) and bool not in types):
            raise ConfigError(f'{source}: its config holds {key}={value!r:.80}, not a value of '
                              f'--{key}; the file is damaged or not from this project or the '
                              f'release')


def is_count(value, low=0):
    """Whether a value read from a file is an int (not a bool) of at least low."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_finite_number(value):
    """Whether a value read from a file is a finite int or float (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def in_domain(value, domain):
    """Whether a number lies in a DOMAINS bound."""
    if isinstance(value, float) and not math.isfinite(value):  # an int of any size is finite
        return False
    if domain[0] in '[(':
        low, high = (float(v) for v in domain[1:-1].split(','))
        return ((low <= value if domain[0] == '[' else low < value)
                and (value <= high if domain[-1] == ']' else value < high))
    op, bound = domain.split()
    return value >= float(bound) if op == '>=' else value > float(bound)


# The largest float32: the models and optimizers compute in float32, so a float flag above it
# (a learning rate of 1e308) overflows in the first step.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT_FLAGS = [spec.get('dest', name[2:]) for name, spec in FLAGS.items()
               if spec.get('type') is float]
INT_FLAGS = [spec.get('dest', name[2:]) for name, spec in FLAGS.items()
             if spec.get('type') is int]


def float32(value):
    """value rounded to float32, as a Python float."""
    return struct.unpack('f', struct.pack('f', value))[0]


def check_flags(config):
    """Refuse a flag value outside its domain, naming the flag and the allowed values.

    Only the keys config holds are checked, so every entry point calls it on its own flags.
    """
    for key, domain in DOMAINS.items():
        if key in config and config[key] is not None and not in_domain(config[key], domain):
            raise ConfigError(f'--{key} must be {domain}, got {config[key]!r}')
    for key in INT_FLAGS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2 ** 63:
            # torch's sizes, numpy's counts and the logs' iterations are int64.
            raise ConfigError(f'--{key} ({len(str(abs(value)))} digits) is beyond int64, in '
                              f'which torch counts: at most {2 ** 63 - 1}')
    for key in FLOAT_FLAGS:
        if isinstance(config.get(key), (int, float)) and abs(config[key]) > FLOAT32_MAX:
            raise ConfigError(f'--{key} {config[key]!r} is beyond float32, in which the models '
                              f'compute: at most {FLOAT32_MAX:.4g}')
        # In float32 a positive value under its smallest subnormal is 0: an --adam_eps of
        # 1e-46 divides 0 by 0 in the first step.
        value = config.get(key)
        if (isinstance(value, (int, float)) and value > 0 and key in DOMAINS
                and float32(value) == 0 and not in_domain(0.0, DOMAINS[key])):
            raise ConfigError(f'--{key} {value!r} is 0 in float32, in which the models '
                              f'compute: it must be {DOMAINS[key]} there, at least 1.4e-45')
    for key in ROOTS:
        if config.get(key) == '':
            # '' joins to paths in the working directory: the S32 cache landed in the tree.
            raise ConfigError(f"--{key} is empty: give a folder ('.' for the current one)")
    for key, choices in CHOICES.items():
        if key in config and config[key] not in choices:
            raise ConfigError(f"--{key} must be one of {', '.join(choices)}, got {config[key]!r}")
    for key, (pattern, allowed) in PATTERNS.items():
        if key in config and not (isinstance(config[key], str)
                                  and re.fullmatch(pattern, config[key])):
            raise ConfigError(f'--{key} must be {allowed}, got {config[key]!r}')
