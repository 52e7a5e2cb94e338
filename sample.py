"""Sample from a trained G (or G_ema): npz files, sheets, interpolations, metrics, truncation.

    python sample.py <the training flags> --experiment_name NAME --sample_sheets --sample_npz
"""
import flags  # first: a Ctrl-C during the slow imports below is one line (flags.py)

# isort: split
import functools
import math
import os
import zipfile

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import trange

import utils
from checkpoints import load_weights
from files import (
    atomic_open,
    check_appendable,
    check_disk,
    check_fits,
    own_folder,
    remove_stale_temps,
    scratch_folder,
)

# What --config_from_name leaves to the command line: the release's list, plus where and how
# this run happens (paths, device, metrics), which describe the run rather than the model.
KEEP_FROM_COMMAND_LINE = ['z_var', 'base_root', 'batch_size', 'G_batch_size', 'use_ema',
                          'G_eval_mode', 'device', 'experiment_name', 'load_weights',
                          'weights_root', 'logs_root', 'samples_root', 'data_root', 'parallel',
                          'amp', 'channels_last', 'compile', 'accumulate_stats',
                          'num_standing_accumulations', 'truncation', 'config_from_name',
                          *flags.MEASUREMENT_FLAGS]


def config_from_checkpoint(config):
    """Take the model flags from the checkpoint's stored config (--config_from_name)."""
    utils.check_names(config)
    saved = load_weights(None, None, {}, config['weights_root'], config['experiment_name'],
                         config['load_weights'] or None, None, strict=False,
                         load_optim=False) or {}
    for item, value in saved.items():
        if item in config and item not in KEEP_FROM_COMMAND_LINE and not item.startswith('sample_'):
            given = config[item]
            default = flags.FLAGS.get(f'--{item}', {}).get('default', given)
            if given != value and given != default:
                # A model flag given on the command line loses to the checkpoint's: say so.
                print(f'note: --{item} {given} is the checkpoint\'s {value} under '
                      f'--config_from_name (model flags come from the checkpoint)')
            config[item] = value
    return config


def check_npz_room(num, resolution, root):
    """Refuse --sample_num_npz when samples.npz would not fit on root's disk: its images and
    labels are written twice (the memory-mapped parts, then the zip) before the parts go."""
    check_disk(2 * num * (3 * resolution * resolution + 8), root,
               f'--sample_num_npz {num} ({resolution} x {resolution} images)',
               'sample fewer images or free space')


def save_npz(sample, num, path, truncation=0.0):
    """Exactly num images (uint8 N x 3 x H x W) and labels (int64) to an npz, in chunks, with
    the truncation z was drawn with (when there was one).

    The arrays are filled on disk through memory maps and stored uncompressed in the zip, so
    memory does not grow with num.
    """
    # The first batch is checked before the progress bar starts, so a G that draws NaN ends
    # in one line.
    batch = sample()
    utils.check_finite_images(batch[0], path)
    # The scratch folder is named like every temporary file, so a killed run's is cleaned up.
    with scratch_folder(path + '.parts') as tmp:
        x_map = y_map = None
        done = 0
        with trange(num, desc='npz', unit='img') as bar:
            while done < num:
                images, labels = batch if batch is not None else sample()
                batch = None
                utils.check_finite_images(images, path)
                n = min(images.shape[0], num - done)
                if x_map is None:
                    x_map = open_memmap(os.path.join(tmp, 'x.npy'), mode='w+', dtype=np.uint8,
                                        shape=(num,) + tuple(images.shape[1:]))
                    y_map = open_memmap(os.path.join(tmp, 'y.npy'), mode='w+', dtype=np.int64,
                                        shape=(num,))
                x_map[done:done + n] = to_uint8(images[:n]).cpu().numpy()
                y_map[done:done + n] = labels[:n].cpu().numpy()
                done += n
                bar.update(n)
        x_map.flush()
        y_map.flush()
        del x_map, y_map
        with atomic_open(path) as f:
            with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as zf:
                zf.write(os.path.join(tmp, 'x.npy'), 'x.npy')
                zf.write(os.path.join(tmp, 'y.npy'), 'y.npy')
                if truncation:
                    with zf.open('truncation.npy', 'w') as entry:
                        np.save(entry, np.float64(truncation))


def truncation_values(spec):
    """The z standard deviations of --sample_trunc_curves start_step_end ('' gives none)."""
    if not spec:
        return []
    try:
        start, step, end = [float(item) for item in spec.split('_')]
    except ValueError:
        raise utils.ConfigError('--sample_trunc_curves takes start_step_end, e.g. '
                                f'0.05_0.05_1.0, got {spec!r}') from None
    if not all(map(math.isfinite, (start, step, end))) or start <= 0 or step <= 0 or end < start:
        raise utils.ConfigError('--sample_trunc_curves needs finite numbers with start > 0, '
                                f'step > 0 and end >= start, got {spec!r}')
    check_fits(8 * (int((end - start) / step) + 2), f'--sample_trunc_curves {spec}\'s values',
               'take a larger step')
    return [float(v) for v in np.arange(start, end + step, step)]  # the release's range


def to_uint8(images):
    """[-1, 1] floats to uint8 pixels, rounded to nearest."""
    return ((images.float() + 1) * 127.5).round().clamp_(0, 255).to(torch.uint8)


def note_truncation(state_dict, truncation):
    """A note when a converted official generator is sampled at another truncation than the
    one its BN statistics were taken for (convert_pretrained.py records it)."""
    stats_for = (state_dict.get('pretrained') or {}).get('truncation')
    if stats_for is not None and stats_for != truncation:
        print(f"note: this checkpoint's BN statistics are for --truncation {stats_for:g}; "
              f"sampling with {truncation:g} differs from the official model's samples")


def run(config):
    if config['config_from_name']:
        config = config_from_checkpoint(config)
    # G's weights all come from the checkpoint, and sampling needs no optimizer.
    config = utils.prepare_config({**config, 'skip_init': True, 'no_optim': True})
    device = torch.device(config['device'])
    trunc_stds = truncation_values(config['sample_trunc_curves'])
    utils.seed_rng(config['seed'])
    torch.backends.cudnn.benchmark = True
    experiment_name = utils.experiment_name(config)
    print(f'Experiment name is {experiment_name}')

    # Metrics need Inception weights and moments: check them before any sampling.
    measure = None
    if config['sample_inception_metrics'] or config['sample_trunc_curves']:
        import inception_utils
        measure = inception_utils.metrics_from_config(config, device)

    utils.check_model_fits(config, "from the checkpoint's config"
                           if config['config_from_name'] else 'from the flags')
    G = utils.build_sampling_G(config, device)
    state_dict = {'itr': 0}
    # --use_ema samples from G_ema.pth, loaded into the same network.
    load_weights(None if config['use_ema'] else G, None, state_dict,
                 config['weights_root'], experiment_name, config['load_weights'] or None,
                 G if config['use_ema'] else None, strict=False, load_optim=False)
    if config['sample_npz']:
        check_npz_room(config['sample_num_npz'], config['resolution'], config['samples_root'])
    utils.prepare_root(config, keys=['samples_root'])
    folder = own_folder(config['samples_root'], experiment_name, deep=True)
    if measure is not None:  # its records are appended after the sampling: check it first
        check_appendable(f'{folder}/metrics.jsonl', 'metrics log')
    remove_stale_temps(folder, recursive=True)

    G_batch_size = max(config['G_batch_size'], config['batch_size'])
    z_, y_ = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device=device,
                               z_var=config['z_var'])
    truncation = config['truncation']
    if truncation:
        utils.attach_sampler(z_, 'truncated_normal', truncation=truncation)
    note_truncation(state_dict, truncation)
    if config['G_eval_mode']:
        G.eval()
    sample = functools.partial(utils.sample, G=G, z_=z_, y_=y_, config=config)
    with utils.sampling(G, z_, y_, config):
        if config['sample_npz']:
            save_npz(sample, config['sample_num_npz'], f'{folder}/samples.npz', truncation)
        utils.save_sheets(G, config, experiment_name, config['sample_sheet_folder_num'], z_,
                          sheets=config['sample_sheets'], interps=config['sample_interps'])
        if config['sample_random']:
            images, _ = sample()
            utils.save_image(images, f'{folder}/random_samples.jpg',
                             nrow=int(G_batch_size ** 0.5))

        records = utils.MetricsLogger(f'{folder}/metrics.jsonl')

        def report_metrics(z_std):
            """IS/FID (and the other metrics) of the current G, printed as the release prints
            them and appended, with the protocol stamp, to samples_root/NAME/metrics.jsonl."""
            sampling = {'truncation': z_std if truncation else 0.0,
                        'z_std': 1.0 if truncation else z_std, 'seed': config['seed'],
                        'weights': 'G_ema' if config['use_ema'] else 'G',
                        'G_eval_mode': config['G_eval_mode']}
            metrics = measure(sample, config['num_inception_images'], num_splits=10,
                              prints=False, sampling=sampling)
            records.log(itr=int(state_dict['itr']), **metrics)
            out = f"Using {'ema' if config['use_ema'] else 'non-ema'} weights "
            out += f"in {'eval' if config['G_eval_mode'] else 'training'} mode, "
            out += f"with {'truncation' if truncation else 'noise variance'} {z_std:3.3f}, "
            out += f"over {config['num_inception_images']} images, "
            if config['accumulate_stats'] or not config['G_eval_mode']:
                out += f'with batch size {G_batch_size}, '
            if config['accumulate_stats']:
                out += (f"using {config['num_standing_accumulations']} standing stat "
                        f'accumulations, ')
            print(out + inception_utils.metrics_line(state_dict['itr'], metrics))

        if config['sample_inception_metrics']:
            report_metrics(truncation or config['z_var'])
        for std in trunc_stds:
            # With --truncation the curve's values are truncations.
            if truncation:
                utils.attach_sampler(z_, 'truncated_normal', truncation=std)
            else:
                utils.attach_sampler(z_, 'normal', mean=0, var=std)
            if config['accumulate_stats']:
                utils.accumulate_standing_stats(G, z_, y_, config['n_classes'],
                                                config['num_standing_accumulations'])
            report_metrics(std)


def main(argv=None):
    utils.run_cli(run, utils.add_sample_parser(utils.prepare_parser()), argv)


if __name__ == '__main__':
    main()
