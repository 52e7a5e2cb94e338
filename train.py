"""Train a BigGAN: builds G, D, G_ema, the loaders and loggers, then runs the loop.

    python train.py --dataset S32 --G_ch 32 --D_ch 32 --batch_size 32 ...  (see scripts/)
"""
import flags  # first: a Ctrl-C during the slow imports below is one line (flags.py)

# isort: split
import contextlib
import functools
import importlib
import os
import signal
import sys

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import collapse
import step_helpers
import train_fns
import utils
from checkpoints import (
    check_finite_step,
    check_room,
    initial_state,
    last_checkpoint,
    load_weights,
    set_rng_state,
)
from datasets import check_training_set, get_data_loaders, to_float
from distributed import setup_distributed
from files import hold_lock, is_temp, own_folder, release_locks, remove_stale_temps


def build_models(config, device):
    """G, D, G_ema (or None) and the ema helper, on device, as the config describes."""
    model = importlib.import_module(config['model'])
    utils.check_model_fits(config, 'from the flags', ('Generator', 'Discriminator'))
    G = model.Generator(**config).to(device)
    D = model.Discriminator(**config).to(device)
    G_ema, ema = None, None
    if config['ema']:
        G_ema = utils.build_sampling_G(config, device)
    if config['channels_last']:
        for net in (G, D, G_ema):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    if config['ema']:
        ema = step_helpers.ema(G, G_ema, config['ema_decay'], config['ema_start'])
    return model, G, D, G_ema, ema


def wrap(net, config, world_size, device):
    """DDP (every rank starts from rank 0's weights; gradients averaged), then torch.compile."""
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == 'cuda' else None)
    if config['compile']:
        net = torch.compile(net)
    return net


@contextlib.contextmanager
def stop_on_signal(enabled=True):
    """Inside, SIGINT/SIGTERM ask the loop to finish its iteration, save and exit (a second
    one stops at once); yields the list the loop polls. Handlers are restored on exit."""
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt(signum)
        requested.append(signum)
        print(f'\nsignal {signum}: stopping after this iteration (with a checkpoint); send it '
              f'again to stop now, without one', file=sys.stderr)
    sigs = (signal.SIGINT, signal.SIGTERM) if enabled else ()
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def training_batches(loader, state_dict, config, rank):
    """(x, y, progress bar or None) for every remaining batch of every remaining epoch.

    A resumed run starts mid-epoch; state_dict['epoch'] advances as each epoch completes.
    """
    for epoch in range(state_dict['epoch'], config['num_epochs']):
        if 0 < config['total_itrs'] <= state_dict['itr']:
            return
        done = state_dict['itr']
        if not config['use_multiepoch_sampler']:
            loader.sampler.set_epoch(epoch)
            done = state_dict['itr'] - epoch * len(loader)
            done = done if 0 <= done <= len(loader) else 0
            loader.sampler.set_epoch(epoch, start=done * loader.batch_size)
        # Worker seeds (random augmentations) differ per epoch and rank, and are reproducible.
        loader.generator.manual_seed(
            int(np.random.SeedSequence([config['seed'], epoch, rank]).generate_state(1)[0]))
        total = len(loader)
        if config['total_itrs']:
            total = max(min(total, config['total_itrs'] - state_dict['itr']), 0)
        bar = None
        if rank == 0 and config['pbar'] == 'mine':
            bar = utils.progress(loader, total=total, start=done, displaytype=(
                's1k' if config['use_multiepoch_sampler'] else 'eta'))
        elif rank == 0:
            bar = tqdm(loader, total=total)
        for x, y in bar if bar is not None else loader:
            if x.shape[0] < loader.batch_size:
                return  # the multi-epoch sampler's last, partial batch
            yield x, y, bar
        state_dict['epoch'] += 1
        if config['use_multiepoch_sampler']:
            return  # one pass of that sampler covers every epoch


def holds_output(path):
    """Whether path is, or is a folder holding, a file other than a writer's temporary one."""
    if not os.path.isdir(path) or os.path.islink(path):
        return not is_temp(os.path.basename(path))
    return any(not is_temp(f) for _, _, names in os.walk(path) for f in names)


def keep_replaced_run(config, name):
    """Move a run that a fresh start (no --resume) would overwrite to name.replacedN in each
    root, and say so: the release started over in place, losing its checkpoints, logs and
    sheets. All of it moves or, when a move fails, none of it (one line)."""
    # Roots that are one folder (--weights_root R --logs_root R ...) hold one run folder,
    # moved once.
    folders, seen = {}, set()
    for root in ('weights_root', 'logs_root', 'samples_root'):
        if os.path.realpath(config[root]) not in seen:
            seen.add(os.path.realpath(config[root]))
            folders[root] = os.path.join(config[root], name)
    jsonl = os.path.join(config['logs_root'], f'{name}_log.jsonl')
    # Temporary files stay (a live writer's, another host's, are its own to rename), and the
    # lock this run holds.
    held = {root: [e for e in os.listdir(f) if e != '.train.lock'
                   and holds_output(os.path.join(f, e))] if os.path.isdir(f) else []
            for root, f in folders.items()}
    if not (any(held.values()) or os.path.exists(jsonl)):
        return

    def kept_name(n):
        # A name near the file system's 255-byte limit is shortened to leave room for the tag
        # (and the test log's _log.jsonl).
        base = name
        while len(f'{base}.replaced{n}_log.jsonl'.encode()) > 255:
            base = base[:-1]
        return f'{base}.replaced{n}'
    n = 1
    while any(os.path.lexists(os.path.join(config[root], kept_name(n))) for root in folders):
        n += 1
    kept = kept_name(n)
    last = last_checkpoint(config['weights_root'], name)
    moves = [(os.path.join(folder, e), os.path.join(config[root], kept, e))
             for root, folder in folders.items() for e in held[root]]
    if os.path.exists(jsonl):
        moves.append((jsonl, os.path.join(config['logs_root'], f'{kept}_log.jsonl')))
    done, made = [], []
    try:
        for src, dst in moves:
            if not os.path.isdir(os.path.dirname(dst)):
                os.makedirs(os.path.dirname(dst))
                made.append(os.path.dirname(dst))
            os.rename(src, dst)
            done.append((src, dst))
    except OSError as e:
        for src, dst in reversed(done):
            os.rename(dst, src)
        for folder in made:
            os.rmdir(folder)
        raise utils.ConfigError(
            f'experiment {name} holds a run that this fresh start (no --resume) would replace, '
            f'and it cannot be set aside as {kept} ({e.strerror}: {e.filename}); nothing was '
            f'moved: pass --resume, another --experiment_name, or move it yourself') from None
    print(f'note: experiment {name} held a run (last checkpoint: {last}) and this one starts '
          f'over (no --resume): that run is kept as experiment {kept} in every root')


def run(config):
    release_locks()  # one run at a time in a process: an earlier one's lock is stale
    config = utils.prepare_config(config)
    if config['on_collapse'] != 'warn' and not config['collapse_watch']:
        # Without the watch nothing detects a collapse, so the action would silently not act.
        raise utils.ConfigError(f"--on_collapse {config['on_collapse']} acts on what "
                                f'--collapse_watch detects: add --collapse_watch')
    experiment_name = utils.experiment_name(config)
    rank, world_size, device = setup_distributed(config)
    if rank == 0:
        for note in flags.inert_flags(config):
            print(note)
    utils.seed_rng(config['seed'])
    torch.backends.cudnn.benchmark = True
    # --tensorboard: rank 0 mirrors its logs and sheets to logs_root/experiment_name/tb.
    tb = utils.TensorBoardLogger.for_run(config, experiment_name, rank)

    # Check the metrics' Inception weights and moments now, so a missing file fails before any
    # training rather than at the first test.
    # --metrics is checked even when nothing tests, so a typo fails now, not at a later resume.
    import inception_utils
    names = inception_utils.select_metrics(config['metrics'], config['no_fid'], config['kid'])
    get_inception_metrics = None
    if config['test_every'] > 0:
        inception_utils.check_which_best(config['which_best'], names)
        get_inception_metrics = inception_utils.metrics_from_config(
            config, device,
            # Tests sample z with std 1 and no truncation, whatever --z_var says (see below).
            sampling={'truncation': 0.0, 'z_std': 1.0, 'seed': config['seed']})

    # Construct networks.
    model, G, D, G_ema, ema = build_models(config, device)
    check_room(G, D, G_ema, config['weights_root'], experiment_name)
    if rank == 0:
        # Users find their weights, logs and samples (and --hashname runs) from this line.
        print(f'Experiment name is {experiment_name}')
        print(f'Number of params in G: {utils.count_parameters(G)} D: {utils.count_parameters(D)}')

    # Resume.
    state_dict = initial_state(config)
    if config['resume']:
        folder = os.path.join(config['weights_root'], experiment_name)
        if not config['experiment_name'] and not os.path.exists(folder):
            # The built name holds the rates: resuming with lower ones looks in another folder.
            raise utils.ConfigError(
                f'nothing to resume at {folder}: without --experiment_name the name is built '
                f'from the flags, learning rates included, so changed flags name another run; '
                f'pass the run\'s own name (--experiment_name, its "Experiment name is" line)')
        load_weights(G, D, state_dict, config['weights_root'], experiment_name,
                     config['load_weights'] or None, G_ema if config['ema'] else None)
        # A relaunch of a finished run (a scheduler's requeue): say so, write nothing.
        done = None
        if config['total_itrs'] and state_dict['itr'] >= config['total_itrs']:
            done = f"iteration {state_dict['itr']}, --total_itrs {config['total_itrs']}"
        elif state_dict['epoch'] >= config['num_epochs']:
            done = f"epoch {state_dict['epoch']}, --num_epochs {config['num_epochs']}"
        if done:
            if rank == 0:
                print(f'nothing to train: the checkpoint is at {done}')
            return

    # Load training set: D consumes batch_size images per accumulation and per D step.
    D_batch_size = config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
    loader = get_data_loaders(**{**config, 'batch_size': D_batch_size,
                                 'start_itr': state_dict['itr'], 'rank': rank,
                                 'world_size': world_size, 'raw': True})[0]
    # Labels and image shapes are checked now: at the first step, after the logs were reset,
    # they would crash the run (or, as float pixels, train on unnormalised images).
    check_training_set(loader.dataset, config)
    if not len(loader.dataset):
        raise utils.ConfigError(f"the training set of --dataset {config['dataset']} holds no "
                                f'images: make it again (make_hdf5.py) from a folder of images')
    if len(loader.dataset) // world_size < D_batch_size:
        n = len(loader.dataset)
        raise utils.ConfigError(
            f"each process gets {n // world_size} of the dataset's {n} images, fewer than one "
            f'step needs (batch_size x num_D_steps x num_D_accumulations = {D_batch_size}): '
            f'lower those flags')

    # Prepare the output folders and logs; only now that every check has passed, so a failed
    # start writes and deletes nothing. Rank 0 keeps the logs; the other ranks log nowhere.
    test_log = train_log = None
    if rank == 0:
        utils.prepare_root(config)
        for root in ('weights_root', 'logs_root', 'samples_root'):
            own_folder(config[root], experiment_name, deep=True)
        # One training per experiment at a time: a second would interleave the logs and
        # checkpoints (held until this process ends).
        hold_lock(f"{config['logs_root']}/{experiment_name}/.train.lock",
                  f'experiment {experiment_name}')
        for root in ('weights_root', 'logs_root', 'samples_root'):
            # Only this run's own folders: the name is one checked component.
            remove_stale_temps(os.path.join(config[root], experiment_name), recursive=True)
        if not config['resume']:
            keep_replaced_run(config, experiment_name)
        test_log = utils.MetricsLogger(f"{config['logs_root']}/{experiment_name}_log.jsonl",
                                       reinitialize=not config['resume'])
        train_log = utils.MyLogger(f"{config['logs_root']}/{experiment_name}",
                                   reinitialize=not config['resume'], logstyle=config['logstyle'])
        test_log.check()
        train_log.check()
        utils.write_metadata(config['logs_root'], experiment_name, config, state_dict)

    # Distribute.
    GD = model.G_D(wrap(G, config, world_size, device), wrap(D, config, world_size, device))
    if world_size > 1:
        torch.manual_seed(config['seed'] + rank)  # each rank its own z and y
    elif config['parallel']:
        GD = nn.DataParallel(GD)

    # Latents: training z has std 1 whatever --z_var says, as in the release (--z_var is
    # sample.py's). Fixed samples come from their own generator, so a resume keeps them.
    G_batch_size = max(config['G_batch_size'], config['batch_size'])
    z_, y_ = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device=device)
    fixed = torch.Generator(device).manual_seed(config['seed'])
    fixed_z = torch.randn(G_batch_size, G.dim_z, device=device, generator=fixed)
    fixed_y = torch.randint(0, config['n_classes'], (G_batch_size,), device=device,
                            generator=fixed)
    if 'rng' in state_dict:
        set_rng_state(state_dict.pop('rng'))

    # The step.
    precision = step_helpers.Precision(config, device)
    if 'amp' in state_dict:
        precision.load_state_dict(state_dict['amp'])
    # The LeCam anchors (None without --LC), a resume's from state_dict; the watch restores
    # them at a rollback.
    anchors = step_helpers.lecam_anchors(config, state_dict)
    if config['which_train_fn'] == 'GAN':
        train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config,
                                                precision, ema_losses=anchors)
    else:  # the release's debugging switch, noted at start-up (flags.RELEASE_READINGS)
        train = train_fns.dummy_training_function()
    sample = functools.partial(utils.sample, G=train_fns.which_G(G, G_ema, config), z_=z_, y_=y_,
                               config=config)

    # --collapse_watch: judges what rank 0 logs; may roll the run back or stop it (collapse.py).
    watch = None
    if config['collapse_watch']:
        watch = collapse.Watch(config, experiment_name, state_dict,
                               (G, D, G_ema if config['ema'] else None), test_log,
                               precision=precision, anchors=anchors)

    def evaluate_and_save(testing, saving):
        """Test (IS/FID, best copies) and/or checkpoint with sheets, in sampling mode."""
        if config['G_eval_mode']:
            G.eval()
            if G_ema is not None:
                G_ema.eval()
        state_dict.update(precision.state_dict())
        if testing:
            # Test before saving, so a checkpoint of this iteration holds the result.
            metrics = train_fns.test(G, D, G_ema, z_, y_, state_dict, config, sample,
                                     get_inception_metrics, experiment_name, test_log)
            tb.scalars(state_dict['itr'], 'test', metrics)
            if watch is not None:
                watch.tested(state_dict['itr'], metrics)
        if saving:
            train_fns.save_and_sample(G, D, G_ema, z_, y_, fixed_z, fixed_y, state_dict, config,
                                      experiment_name)
            tb.after_save(state_dict['itr'], config['samples_root'], experiment_name)
            if watch is not None:
                watch.saved(state_dict['itr'])

    # Train. Under torchrun the launcher owns signals; a lone process stops cleanly on them.
    start_itr = state_dict['itr']
    with stop_on_signal(world_size == 1) as stop:
        for x, y, bar in training_batches(loader, state_dict, config, rank):
            state_dict['itr'] += 1
            itr = state_dict['itr']
            for net in (G, D, G_ema):
                if net is not None:
                    net.train()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = to_float(x)  # HDF5 batches travel as uint8
            if config['channels_last']:
                x = x.contiguous(memory_format=torch.channels_last)
            metrics = train(x, y)
            # The losses are on the host already: a NaN or Inf stops the run before it is
            # shown, logged or saved (under fp16 GradScaler skipped the step: training goes on,
            # and that step's losses are neither shown nor logged).
            finite = check_finite_step(metrics, {'G': G, 'D': D}, itr, config['weights_root'],
                                       experiment_name, scaled=precision.G_scaler.is_enabled())
            shown = metrics if finite else {}
            svs = {}
            if rank == 0:
                if shown:
                    train_log.log(itr=itr, **shown)
                    bar.set_postfix(shown)
                # The watch reads them at its own cadence too, and logs what it reads.
                if ((config['sv_log_interval'] > 0 and not itr % config['sv_log_interval'])
                        or (watch is not None and watch.due(itr))):
                    svs = utils.read_SVs({'G': G, 'D': D})
                    train_log.log(itr=itr, **svs)
                tb.log_train(itr, shown, svs, D_batch_size * world_size, G=G.optim, D=D.optim)
            if watch is not None:
                watch.observe(itr, metrics, svs)

            testing = config['test_every'] > 0 and not itr % config['test_every']
            saving = config['save_every'] > 0 and not itr % config['save_every']
            if testing or saving:
                evaluate_and_save(testing, saving)
            if watch is not None:
                watch.judge(itr)
            if 0 < config['total_itrs'] <= itr or stop:
                break

    # The last iteration gets a checkpoint and sheets too, wherever the run stopped.
    itr = state_dict['itr']
    if config['save_every'] > 0 and itr > start_itr and itr % config['save_every']:
        evaluate_and_save(testing=False, saving=True)
    tb.close()
    if world_size > 1:
        torch.distributed.destroy_process_group()
    release_locks()
    return state_dict


def main(argv=None):
    try:
        utils.run_cli(run, utils.prepare_parser(), argv)
    finally:
        release_locks()


if __name__ == '__main__':
    main()
