"""What train.py, sample.py and the tools share, in sections: config, logging, sampling,
latents.

The command line lives in flags.py, the data path in datasets.py, checkpoints in
checkpoints.py, atomic writes in files.py, devices and ranks in distributed.py, the training
step's helpers (precision, EMA, LeCam anchors, ortho reg) in step_helpers.py; the names the
release's users import from utils (utils.prepare_parser, utils.get_data_loaders,
utils.load_weights, utils.ema, ...) are re-exported here.
"""
import contextlib
import datetime
import functools
import hashlib
import importlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision

import layers

# Re-exported: the release's names that moved to their own modules (tests/test_release_api.py
# lists every name release users import), and the project's most used helpers.
from checkpoints import atomic_open, check_writable, load_weights, save_weights, torch_load  # noqa: F401
from datasets import (  # noqa: F401
    DATASETS,
    WORKER_NBYTES,
    CenterCropLongEdge,
    MultiEpochSampler,
    RandomCropLongEdge,
    check_dataset,
    classes_per_sheet,
    classes_per_sheet_dict,
    dset_dict,
    get_data_loaders,
    imsize_dict,
    nclass_dict,
    root_dict,
)
from distributed import pick_device
from files import check_appendable, check_fits, check_name, open_append, own_folder
from flags import (  # noqa: F401
    FLAGS,
    ROOTS,
    ConfigError,
    StopRun,
    add_sample_parser,
    check_flags,
    prepare_parser,
    run_cli,
)
from step_helpers import (  # noqa: F401
    amp_dtype,
    autocast,
    config_autocast,
    default_ortho,
    ema,
    ema_losses,
    ortho,
    ortho_grad,
    toggle_grad,
)

# ----------------------------------------------------------------------------
# Config.

activation_dict = {'inplace_relu': nn.ReLU(inplace=True),
                   'relu': nn.ReLU(inplace=False),
                   'ir': nn.ReLU(inplace=True)}


def update_config_roots(config):
    """Peg every root folder under --base_root when it is given (the release's rule; a root
    also given is noted, not silently replaced)."""
    if config['base_root']:
        for key in ROOTS:
            pegged = f"{config['base_root']}/{key[:-5]}"
            if config.get(key, pegged) not in (pegged, FLAGS[f'--{key}'].get('default')):
                print(f'note: --{key} {config[key]} is replaced by {pegged} under --base_root '
                      f'(the release\'s rule: every root under it)')
            config[key] = pegged
    return config


def weights_nbytes(config, nets=('Generator',)):
    """Bytes of the weights of config's named networks (of its --model), built on the meta
    device, where nothing is allocated."""
    model = importlib.import_module(config['model'])
    with torch.device('meta'):
        return sum(t.numel() * t.element_size() for name in nets
                   for t in getattr(model, name)(**{**config, 'skip_init': True,
                                                     'no_optim': True}).state_dict().values())


def check_model_fits(config, source, nets=('Generator',)):
    """Refuse, in one line naming source (the flags or the file a config came from), a model
    whose weights alone would not fit in memory: widths and class counts are unbounded flags."""
    try:
        nbytes = weights_nbytes(config, nets)
    except (RuntimeError, OverflowError):  # a size beyond int64 ('Storage size ... overflowed')
        nbytes = math.inf
    except TypeError as e:  # one dimension beyond int64: torch cannot even take the shape
        if 'Overflow' not in str(e):
            raise
        nbytes = math.inf
    check_fits(nbytes, f"the weights of the {' and '.join(nets)} "
               f'({source})', 'check --G_ch, --D_ch, --dim_z, --shared_dim, --n_classes and '
               '--resolution')


def check_batch_fits(config):
    """Refuse batch sizes whose images alone (float32 3 x res x res, with their z and label)
    would not fit in memory: the fixed sampling batch is allocated at start-up."""
    n = max(config.get('G_batch_size') or 0, config['batch_size'])
    res, dim_z = config['resolution'], config['dim_z']
    # The advice names the larger of the two, so following it helps.
    what, advice = ((f'{n} images of {res} x {res}', 'a smaller --batch_size or --G_batch_size')
                    if 3 * res * res >= dim_z else (f'{n} latent vectors of {dim_z}', 'a '
                                                    'smaller --dim_z (here or in the stored '
                                                    'config)'))
    check_fits(n * (4 * 3 * res * res + 4 * dim_z + 8),
               f'{what} (--batch_size / --G_batch_size {n}, --dim_z {dim_z})', f'use {advice}')


def prepare_config(config):
    """Derive what every entry point needs from the flags, and refuse combinations that cannot
    work. Returns config, completed with resolution, n_classes, activations, roots and device."""
    check_names(config)
    check_flags(config)
    check_dataset(config)
    entry = DATASETS.get(config['dataset'])
    config['resolution'] = config.get('resolution') or entry.resolution
    config['n_classes'] = config.get('n_classes') or entry.n_classes
    for key in ['G_nl', 'D_nl']:
        if config[key] not in activation_dict:
            raise ConfigError(f'unknown --{key} {config[key]!r}: use one of '
                              f"{', '.join(activation_dict)}")
    config['G_activation'] = activation_dict[config['G_nl']]
    config['D_activation'] = activation_dict[config['D_nl']]
    if config['resolution'] not in (32, 64, 128, 256, 512):
        raise ConfigError(f"resolution {config['resolution']} has no architecture: use 32, 64, "
                          f'128, 256 or 512')
    check_batch_fits(config)
    check_fits(config.get('num_workers', 0) * WORKER_NBYTES,
               f"{config.get('num_workers')} data-loader worker processes (--num_workers)",
               'lower --num_workers')
    if config.get('resume'):
        config['skip_init'] = True  # the checkpoint overwrites every weight anyway
    # The release printed a note for an unknown init and kept PyTorch's default init.
    for key in ['G_init', 'D_init']:
        if not config['skip_init'] and config[key] not in layers.INIT_STYLES:
            raise ConfigError(f"unknown --{key} {config[key]!r}: use "
                              f"{', '.join(layers.INIT_STYLES)}")
    measuring = (config['test_every'] > 0 or config.get('sample_inception_metrics')
                 or config.get('sample_trunc_curves'))
    if measuring and config['num_inception_images'] < 10:
        raise ConfigError(('--num_inception_images must be at least 10 (IS averages over 10 '
                          f"splits), got {config['num_inception_images']}"))
    if any([config['G_fp16'], config['D_fp16'], config['G_mixed_precision'],
            config['D_mixed_precision']]) and not config.get('amp'):
        print("note: the release's fp16 flags now mean --amp fp16 (torch.autocast + GradScaler)")
        config['amp'] = 'fp16'
    check_policies(config)
    if config.get('R1', 0) > 0 and config.get('compile'):
        raise ConfigError('--R1 needs a double backward through D, which --compile does not '
                          'support: drop one of them')
    if (config.get('collapse_watch') and config.get('on_collapse') == 'rollback'
            and config['save_every'] <= 0):
        raise ConfigError('--on_collapse rollback rolls back to a checkpoint: set --save_every '
                          '> 0 (or use --on_collapse warn or stop)')
    config = update_config_roots(config)
    config['device'] = str(pick_device(config.get('device')))
    return config


def check_policies(config):
    """Refuse unknown --DiffAugment/--CR_augment policies at start-up (the fork failed
    mid-training)."""
    from DiffAugment_pytorch import PolicyError, policy_names
    cr_augment = config.get('CR_augment') or ''
    if 'flip' in cr_augment.split(',')[1:] or cr_augment == 'flip':
        raise ConfigError(f"--CR_augment {cr_augment!r}: flip goes first and with a comma, "
                          f"e.g. 'flip,translation', or 'flip,' for a flip alone")
    for flag, policy in [('DiffAugment', config.get('DiffAugment', '')),
                         ('CR_augment', cr_augment.replace('flip,', ''))]:
        try:
            policy_names(policy)
        except PolicyError as e:
            raise ConfigError(f'--{flag}: {e}') from None


def seed_rng(seed):
    """Seed torch (every device), numpy and python."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def check_names(config):
    """Refuse, before anything is created, a flag that names a path component and is not one
    plain name (it could reach outside the roots it is joined to)."""
    for key in ('experiment_name', 'name_suffix', 'load_weights'):
        if config.get(key):
            check_name(config[key], f'--{key}')


def experiment_name(config):
    """The run's folder name: --experiment_name, else the one built from the config; checked."""
    return check_name(config['experiment_name'] or name_from_config(config), 'experiment name')


def prepare_root(config, keys=('weights_root', 'logs_root', 'samples_root')):
    """Create the root folders, once all of them are known to be creatable and writable."""
    for key in keys:
        check_writable(config[key], f'--{key}')
    for key in keys:
        os.makedirs(config[key], exist_ok=True)


def join_strings(base_string, strings):
    """base_string.join of the non-empty strings."""
    return base_string.join([item for item in strings if item])


def hashname(name):
    """A short stable name: the same in every process and run (the release's was salted)."""
    return 'h' + hashlib.sha256(name.encode()).hexdigest()[:12]


def name_from_config(config):
    """The release's experiment name, built from the config."""
    name = '_'.join([item for item in [
        f"Big{config['which_train_fn']}",
        config['dataset'],
        config['model'] if config['model'] != 'BigGAN' else None,
        f"seed{config['seed']}",
        f"Gch{config['G_ch']}",
        f"Dch{config['D_ch']}",
        f"Gd{config['G_depth']}" if config['G_depth'] > 1 else None,
        f"Dd{config['D_depth']}" if config['D_depth'] > 1 else None,
        f"bs{config['batch_size']}",
        'Gfp16' if config['G_fp16'] else None,
        'Dfp16' if config['D_fp16'] else None,
        f"nDs{config['num_D_steps']}" if config['num_D_steps'] > 1 else None,
        f"nDa{config['num_D_accumulations']}" if config['num_D_accumulations'] > 1 else None,
        f"nGa{config['num_G_accumulations']}" if config['num_G_accumulations'] > 1 else None,
        f"Glr{config['G_lr']:2.1e}",
        f"Dlr{config['D_lr']:2.1e}",
        f"GB{config['G_B1']:3.3f}" if config['G_B1'] != 0.0 else None,
        f"GBB{config['G_B2']:3.3f}" if config['G_B2'] != 0.999 else None,
        f"DB{config['D_B1']:3.3f}" if config['D_B1'] != 0.0 else None,
        f"DBB{config['D_B2']:3.3f}" if config['D_B2'] != 0.999 else None,
        f"Gnl{config['G_nl']}",
        f"Dnl{config['D_nl']}",
        f"Ginit{config['G_init']}",
        f"Dinit{config['D_init']}",
        f"G{config['G_param']}" if config['G_param'] != 'SN' else None,
        f"D{config['D_param']}" if config['D_param'] != 'SN' else None,
        f"Gattn{config['G_attn']}" if config['G_attn'] != '0' else None,
        f"Dattn{config['D_attn']}" if config['D_attn'] != '0' else None,
        f"Gortho{config['G_ortho']:2.1e}" if config['G_ortho'] > 0.0 else None,
        f"Dortho{config['D_ortho']:2.1e}" if config['D_ortho'] > 0.0 else None,
        config['norm_style'] if config['norm_style'] != 'bn' else None,
        'cr' if config['cross_replica'] else None,
        'Gshared' if config['G_shared'] else None,
        'hier' if config['hier'] else None,
        'ema' if config['ema'] else None,
        config['name_suffix'] if config['name_suffix'] else None,
    ] if item is not None])
    return hashname(name) if config['hashname'] else name


def count_parameters(module):
    """Number of parameters in module."""
    return sum(p.numel() for p in module.parameters())


def print_grad_norms(net):
    """Print each parameter's name, gradient norm, norm and shape, smallest gradient first."""
    rows = [(name, None if p.grad is None else float(torch.norm(p.grad)),
             float(torch.norm(p.detach())), tuple(p.shape)) for name, p in net.named_parameters()]
    # Parameters without a gradient (frozen, or unused this step) come first, as 'None'.
    rows.sort(key=lambda r: (r[1] is not None, r[1] or 0.0))
    for name, grad_norm, norm, shape in rows:
        grad = 'None' if grad_norm is None else f'{grad_norm:3.3e}'
        print(f'{name}: grad {grad}, norm {norm:3.3e}, shape {shape}')


def query_gpu(indices=None):
    """Print free and total memory of the CUDA devices in indices (all when None)."""
    if not torch.cuda.is_available():
        print('query_gpu: no GPU (CUDA is not available)')
        return
    if indices is None:
        indices = range(torch.cuda.device_count())
    elif isinstance(indices, int):
        indices = [indices]
    for i in indices:
        free, total = torch.cuda.mem_get_info(i)
        print(f'GPU {i} ({torch.cuda.get_device_name(i)}): {free / 2**20:.0f} MiB free '
              f'of {total / 2**20:.0f} MiB')


# ----------------------------------------------------------------------------
# Logging.

class MetricsLogger(object):
    """Appends one JSON object per call to a .jsonl file."""

    def __init__(self, fname, reinitialize=False):
        self.fname = fname
        self.reinitialize = reinitialize
        if os.path.exists(self.fname) and self.reinitialize:
            os.remove(self.fname)

    def check(self):
        """Refuse, before anything is written, a log file no line may be appended to."""
        check_appendable(self.fname, 'test log')

    def log(self, record=None, **kwargs):
        record = dict(record or {})
        record.update(kwargs)
        record['_stamp'] = time.time()
        with open_append(self.fname) as f:
            f.write(json.dumps(record, ensure_ascii=True) + '\n')


class MyLogger(object):
    """One plain-text file per metric, lines `itr: value` in logstyle (MATLAB-friendly)."""

    def __init__(self, fname, reinitialize=False, logstyle='%3.3f'):
        self.root = fname
        os.makedirs(self.root, exist_ok=True)
        self.reinitialize = reinitialize
        self.metrics = []
        self.logstyle = logstyle

    def check(self):
        """Refuse, before anything is written, any *.log here no line may be appended to (a
        resume appends to each metric's log only when it first logs it, after a step)."""
        for entry in sorted(os.listdir(self.root)):
            if entry.endswith('.log'):
                check_appendable(os.path.join(self.root, entry))

    def reinit(self, item):
        """Delete a metric's old log when starting afresh."""
        path = f'{self.root}/{item}.log'
        if os.path.exists(path) and self.reinitialize:
            os.remove(path)

    def log(self, itr, **kwargs):
        for arg in kwargs:
            if arg not in self.metrics:
                self.reinit(arg)
                self.metrics.append(arg)
            if self.logstyle in ('pickle', 'mat'):
                continue  # unsupported in the release too
            with open_append(f'{self.root}/{arg}.log') as f:
                f.write(f'{itr}: {self.logstyle % kwargs[arg]}\n')


class TensorBoardLogger(object):
    """Mirrors a run's logs into TensorBoard event files in log_dir (rank 0 only).

    Off (every method does nothing) when log_dir is None. The event file is created at the
    first write, so a run that fails its checks leaves none; a fresh run removes old event
    files first, as MyLogger removes old logs. Events reach the disk at each after_save() and
    every two minutes.
    """

    def __init__(self, log_dir=None, reinitialize=False):
        self.log_dir, self.reinitialize = log_dir, reinitialize
        self.writer = None
        self.last = None  # (time, itr) of the previous log_train, for images/s
        if log_dir is not None:
            self.proto = tensorboard_modules()

    @classmethod
    def for_run(cls, config, experiment_name, rank):
        """The run's logger: off without --tensorboard and on ranks other than 0. Every rank
        checks the package, so a missing one stops them all before anything is written; rank 0
        checks that its folder can be written."""
        if not config.get('tensorboard'):
            return cls()
        if rank != 0:
            tensorboard_modules()  # a missing package stops every rank, not only rank 0
            return cls()
        log_dir = f"{config['logs_root']}/{experiment_name}/tb"
        # The event file is created at the first write, in the writer's thread: a folder that
        # cannot be written is refused now, not after the first iteration.
        check_writable(log_dir, '--tensorboard folder')
        return cls(log_dir, reinitialize=not config['resume'])

    def write(self, step, values, wall_time=None):
        """One event at step (and wall_time, default now) holding values, Summary.Values."""
        if self.log_dir is None:
            return
        event_pb2, summary_pb2, EventFileWriter = self.proto
        if self.writer is None:
            if self.reinitialize and os.path.isdir(self.log_dir):
                for name in os.listdir(self.log_dir):
                    if name.startswith('events.out.tfevents.'):
                        os.remove(os.path.join(self.log_dir, name))
            self.writer = EventFileWriter(self.log_dir)
            if not self.reinitialize:
                # A resumed run: TensorBoard drops older events from this step on, which the
                # interrupted run logged after its last checkpoint.
                self.writer.add_event(event_pb2.Event(
                    step=step, session_log=event_pb2.SessionLog(
                        status=event_pb2.SessionLog.START)))
        self.writer.add_event(event_pb2.Event(wall_time=wall_time or time.time(), step=step,
                                              summary=summary_pb2.Summary(value=values)))

    def summary_values(self, group, values):
        """Summary.Values for {name: number}, tagged group/name."""
        Value = self.proto[1].Summary.Value
        return [Value(tag=f'{group}/{k}', simple_value=float(v)) for k, v in values.items()]

    def scalars(self, step, group, values):
        """values {name: number} as scalars group/name, in one event."""
        if self.log_dir is not None and values:
            self.write(step, self.summary_values(group, values))

    def log_train(self, itr, metrics, svs, images, **optims):
        """One iteration in one event: losses, singular values (when logged), learning rates
        and images/s (images per iteration over the time since the previous call)."""
        if self.log_dir is None:
            return
        groups = {'train': metrics, 'sv': svs,
                  'lr': {k: o.param_groups[0]['lr'] for k, o in optims.items()}}
        now = time.time()
        if self.last is not None and now > self.last[0]:
            groups['speed'] = {'images_per_s': images * (itr - self.last[1]) / (now - self.last[0])}
        self.last = (now, itr)
        self.write(itr, [v for group, values in groups.items()
                         for v in self.summary_values(group, values)], wall_time=now)

    def after_save(self, itr, samples_root, experiment_name):
        """After a save: its fixed-z sheet and first class sheet, as the JPEGs written (the
        other class sheets and interpolations would grow the event file by megabytes a save),
        then everything to disk, so a killed run keeps what it logged up to its checkpoint."""
        if self.log_dir is None:
            return
        from PIL import Image
        Summary = self.proto[1].Summary
        folder = f'{samples_root}/{experiment_name}'
        values = []
        for tag, path in [('samples/fixed', f'{folder}/fixed_samples{itr}.jpg'),
                          ('samples/classes0', f'{folder}/{itr}/samples0.jpg')]:
            if os.path.exists(path):
                with open(path, 'rb') as f, Image.open(path) as im:
                    values.append(Summary.Value(tag=tag, image=Summary.Image(
                        height=im.height, width=im.width, colorspace=3,
                        encoded_image_string=f.read())))
        if values:
            self.write(itr, values)
        self.flush()

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        """Flush and close; the logger is off afterwards."""
        if self.writer is not None:
            self.writer.close()
        self.writer = self.log_dir = None


def tensorboard_modules():
    """tensorboard's event and summary protos and its event file writer, or a ConfigError."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ConfigError('--tensorboard needs the tensorboard package: pip install tensorboard'
                          ) from None
    return event_pb2, summary_pb2, EventFileWriter


def write_metadata(logs_root, experiment_name, config, state_dict):
    """metalog.txt: when, the config and the state of this run."""
    with atomic_open(f'{own_folder(logs_root, experiment_name)}/metalog.txt', 'w') as f:
        f.write(f'datetime: {str(datetime.datetime.now())}\n')
        f.write(f'config: {str(config)}\n')
        f.write(f"state: {str({k: v for k, v in state_dict.items() if k != 'rng'})}\n")


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
        self.postfix = ', '.join(f'{k} : {v:+4.3f}' for k, v in metrics.items())  # release

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
        percent = 100.0 * n / max(self.total, 1)
        line = f'\r{self.desc}{self.start + n}/{self.start + self.total} ({percent:6.2f}%) '
        if self.displaytype == 's1k':
            label, t_other = 'ET1k', t_done / n * 1000
        else:
            label, t_other = 'ETA', t_done / n * (self.total - n)
        line += f'(TE/{label}: {clock(t_done)} / {clock(t_other)}) '
        print(line + self.postfix, end=end, file=self.file, flush=True)


def clock(seconds):
    """m:ss, as the release's progress line shows times."""
    minutes, secs = divmod(int(seconds), 60)
    return f'{minutes}:{secs:02d}'


def get_SVs(net, prefix):
    """The logged singular values of every SN layer, keyed like the release's logs."""
    return read_SVs({prefix: net})


def read_SVs(nets):
    """get_SVs of every {prefix: net} in one dict, read from the device in one transfer per
    device (not one .item() per layer)."""
    names, values = [], {}
    for prefix, net in nets.items():
        for key, buf in net.state_dict().items():
            if 'sv' in key:
                names.append((f'{prefix}_{key}').replace('.', '_'))
                values.setdefault(buf.device, []).append((len(names) - 1, buf.reshape(-1)))
    out = [0.0] * len(names)
    for parts in values.values():
        for (i, _), v in zip(parts, torch.cat([b for _, b in parts]).cpu().tolist()):
            out[i] = float(v)
    return dict(zip(names, out))


# ----------------------------------------------------------------------------
# Sampling.

def initiate_standing_stats(net):
    """Reset every standing-stat BN of net and switch it to accumulating."""
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


@contextlib.contextmanager
def sampling(G, z_, y_, config):
    """Sample from G inside: --amp's autocast, standing stats accumulated when asked, and
    G's training state (RNGs, BN statistics, SN vectors) restored on exit."""
    with sampling_state(G), config_autocast(config, next(G.parameters()).device):
        if config['accumulate_stats']:
            accumulate_standing_stats(G, z_, y_, config['n_classes'],
                                      config['num_standing_accumulations'])
        yield


def save_sheets(G, config, experiment_name, folder_number, z_=None, sheets=True,
                interps=True):
    """The class sheets (samples{i}.jpg) and the three interpolation sheets (interpZ0,
    interpY0, interpZY0) in samples_root/experiment_name/folder_number."""
    if sheets:
        sample_sheet(G, classes_per_sheet=classes_per_sheet(config),
                     num_classes=config['n_classes'], samples_per_class=10,
                     parallel=config['parallel'], samples_root=config['samples_root'],
                     experiment_name=experiment_name, folder_number=folder_number, z_=z_,
                     truncation=config.get('truncation', 0.0))
    for fix_z, fix_y in zip([False, False, True], [False, True, False]) if interps else ():
        interp_sheet(G, num_per_sheet=16, num_midpoints=8, num_classes=config['n_classes'],
                     parallel=config['parallel'], samples_root=config['samples_root'],
                     experiment_name=experiment_name, folder_number=folder_number,
                     sheet_number=0, fix_z=fix_z, fix_y=fix_y,
                     truncation=config.get('truncation', 0.0))


def build_sampling_G(config, device=None):
    """config's Generator for weights that come from elsewhere (a checkpoint, the EMA, a
    conversion): no init and no optimizer; moved to device when given."""
    model = importlib.import_module(config['model'])
    G = model.Generator(**{**config, 'skip_init': True, 'no_optim': True})
    return G if device is None else G.to(device)


def run_G(G, z, y, parallel=False, embedded=False):
    """G(z, G.shared(y)) under no_grad (y used as is when already embedded), over the visible
    GPUs with DataParallel if asked."""
    with torch.no_grad():
        gy = y if embedded else G.shared(y)
        if parallel and torch.cuda.device_count() > 1 and z.is_cuda:
            return nn.parallel.data_parallel(G, (z, gy))
        return G(z, gy)


def sample(G, z_, y_, config, label=None):
    """A fresh batch from G: (images in [-1, 1], labels); every label is `label` when given
    (intra-FID's per-class samples)."""
    z_.sample_()
    if label is None:
        y_.sample_()
    else:
        y_.fill_(label)
    return run_G(G, z_, y_, config['parallel']).float(), y_


def check_finite_images(images, path):
    """Refuse to write images holding NaN or Inf (as pixels they would be silently black):
    G's weights are checked finite at load, so values no training leaves made them (a weight
    too large for float32 to compute through, a zero spectral-norm vector)."""
    if not torch.isfinite(images).all():
        raise StopRun(f'G drew NaN or Inf pixels, so {path} is not written: its finite weights '
                      f'hold values no training leaves (a weight too large for float32 to '
                      f'compute through, a zero spectral-norm vector); the checkpoint is '
                      f'damaged: use another set (--load_weights copy0, ...) or train again')


def save_image(images, path, nrow):
    """torchvision's min-max normalised grid, written atomically as JPEG."""
    check_finite_images(images, path)
    with atomic_open(path) as f:
        torchvision.utils.save_image(images.float().cpu(), f, nrow=nrow, normalize=True,
                                     format='JPEG')


def sample_sheet(G, classes_per_sheet, num_classes, samples_per_class, parallel, samples_root,
                 experiment_name, folder_number, z_=None, truncation=0.0):
    """Sheets of samples_per_class samples (columns) for classes_per_sheet classes (rows);
    z from z_.sample_() when it holds a sheet row, else from draw_z."""
    device = next(G.parameters()).device
    folder = own_folder(samples_root, experiment_name, folder_number)
    for i in range(math.ceil(num_classes / classes_per_sheet)):
        y = torch.arange(i * classes_per_sheet, min((i + 1) * classes_per_sheet, num_classes),
                         device=device)
        ims = []
        for _ in range(samples_per_class):
            if z_ is not None and hasattr(z_, 'sample_') and len(y) <= z_.size(0):
                z = z_.sample_()[:len(y)]
            else:
                z = draw_z((len(y), G.dim_z), device, truncation)
            ims.append(run_G(G, z, y, parallel).float().cpu())
        out_ims = torch.stack(ims, 1).flatten(0, 1)  # (classes * samples, 3, H, W), row a class
        save_image(out_ims, f'{folder}/samples{i}.jpg', nrow=samples_per_class)


def interp(x0, x1, num_midpoints):
    """num_midpoints + 2 points from x0 to x1 along dim 1: (N, 1, D) -> (N, M + 2, D)."""
    lerp = torch.linspace(0, 1.0, num_midpoints + 2, device=x0.device).to(x0.dtype)
    return x0 * (1 - lerp.view(1, -1, 1)) + x1 * lerp.view(1, -1, 1)


def sample_classes(batch_size, num_classes, device='cpu'):
    """batch_size random class indices in [0, num_classes) (int64, not one-hot)."""
    return torch.randint(low=0, high=num_classes, size=(batch_size,), device=device,
                         dtype=torch.int64)


# The release's name: it returns indices, not one-hot vectors.
sample_1hot = sample_classes


def interp_sheet(G, num_per_sheet, num_midpoints, num_classes, parallel, samples_root,
                 experiment_name, folder_number, sheet_number=0, fix_z=False, fix_y=False,
                 device=None, truncation=0.0):
    """Rows interpolating z, y or both between two random endpoints (z from draw_z)."""
    device = device or next(G.parameters()).device
    steps = num_midpoints + 2
    shape = (num_per_sheet, 1, G.dim_z)
    if fix_z:
        zs = draw_z(shape, device, truncation).repeat(1, steps, 1)
    else:
        zs = interp(draw_z(shape, device, truncation), draw_z(shape, device, truncation),
                    num_midpoints)
    with torch.no_grad():
        def embed():
            return G.shared(sample_classes(num_per_sheet, num_classes, device)).view(
                num_per_sheet, 1, -1)
        ys = embed().repeat(1, steps, 1) if fix_y else interp(embed(), embed(), num_midpoints)
        # Without a shared embedding ys are class indices: one per image.
        ys = ys.view(num_per_sheet * steps, -1)
        ys = ys.view(-1) if not ys.is_floating_point() else ys
        out_ims = run_G(G, zs.view(-1, G.dim_z), ys, parallel, embedded=True)
    style = ('Z' if not fix_z else '') + ('Y' if not fix_y else '')
    folder = own_folder(samples_root, experiment_name, folder_number)
    save_image(out_ims, f'{folder}/interp{style}{sheet_number}.jpg', nrow=steps)


# ----------------------------------------------------------------------------
# Latents.

def attach_sampler(tensor, dist_type, **kwargs):
    """Give a plain tensor the release's in-place `sample_()`.

    The release subclassed torch.Tensor, and the subclass leaked into every result; here the
    tensor stays a torch.Tensor and slicing or arithmetic on it gives ordinary tensors.
    dist_type 'normal' takes mean and var (used as the standard deviation, as in the release);
    'truncated_normal' takes truncation (see truncated_normal_); 'categorical' takes
    num_categories.
    """
    if dist_type == 'normal':
        tensor.sample_ = functools.partial(tensor.normal_, kwargs['mean'], kwargs['var'])
    elif dist_type == 'truncated_normal':
        tensor.sample_ = functools.partial(truncated_normal_, tensor, kwargs['truncation'])
    elif dist_type == 'categorical':
        tensor.sample_ = functools.partial(tensor.random_, 0, kwargs['num_categories'])
    else:
        raise ValueError(f'unknown distribution {dist_type!r}')
    tensor.dist_type, tensor.dist_kwargs = dist_type, kwargs
    return tensor


# The release's name: there it was a torch.Tensor subclass; here a function attaching sample_().
Distribution = attach_sampler


def truncated_normal_(tensor, truncation):
    """tensor filled in place with truncation x a standard normal truncated to [-2, 2]: the
    truncation trick as the official BigGAN models are sampled (BigGAN's TF-Hub modules,
    pytorch-pretrained-BigGAN's truncated_noise_sample)."""
    return torch.nn.init.trunc_normal_(tensor, 0.0, 1.0, -2.0, 2.0).mul_(truncation)


def draw_z(shape, device, truncation=0.0):
    """Fresh latents: standard normal, or truncated_normal_ when truncation > 0."""
    if truncation:
        return truncated_normal_(torch.empty(shape, device=device), truncation)
    return torch.randn(shape, device=device)


def prepare_z_y(G_batch_size, dim_z, nclasses, device='cpu', fp16=False, z_var=1.0):
    """z_ (normal, std z_var) and y_ (uniform classes) buffers with sample_()."""
    # Drawn on the CPU and moved, as the release did: the device's generator is left
    # untouched, so every later z_/y_ draw on it matches the release's for the same seed.
    z = torch.randn(G_batch_size, dim_z).to(device, torch.float16 if fp16 else torch.float32)
    z_ = attach_sampler(z, 'normal', mean=0, var=z_var)
    y_ = attach_sampler(torch.zeros(G_batch_size, device=device, dtype=torch.int64),
                      'categorical', num_categories=nclasses)
    return z_, y_
