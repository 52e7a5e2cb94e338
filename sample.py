"""Sample from a trained G (or G_ema): npz files, sheets, interpolations, metrics, truncation.

    python sample.py <the training flags> --experiment_name NAME --sample_sheets --sample_npz
"""
import functools
import importlib
import os
import tempfile
import zipfile

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import trange

import utils

# What --config_from_name leaves to the command line: the release's list, plus where and how
# this run happens (paths, device, metrics), which describe the run rather than the model.
KEEP_FROM_COMMAND_LINE = ['z_var', 'base_root', 'batch_size', 'G_batch_size', 'use_ema',
                          'G_eval_mode', 'device', 'experiment_name', 'load_weights',
                          'weights_root', 'logs_root', 'samples_root', 'data_root', 'parallel',
                          'amp', 'channels_last', 'compile', 'inception_backend',
                          'inception_weights', 'kid', 'num_inception_images', 'no_fid',
                          'accumulate_stats', 'num_standing_accumulations', 'truncation']


def config_from_checkpoint(config):
    """Take the model flags from the checkpoint's stored config (--config_from_name)."""
    saved = utils.load_weights(None, None, {}, config['weights_root'], config['experiment_name'],
                               config['load_weights'] or None, None, strict=False,
                               load_optim=False) or {}
    for item, value in saved.items():
        if item in config and item not in KEEP_FROM_COMMAND_LINE and not item.startswith('sample_'):
            config[item] = value
    return config


def save_npz(sample, num, path, truncation=0.0):
    """Exactly num images (uint8 N x 3 x H x W) and labels (int64) to an npz, in chunks, with
    the truncation z was drawn with (when there was one).

    The arrays are filled on disk through memory maps and stored uncompressed in the zip, so
    memory does not grow with num.
    """
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path) or '.') as tmp:
        x_map = y_map = None
        done = 0
        with trange(num, desc='npz', unit='img') as bar:
            while done < num:
                images, labels = sample()
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
        with utils.atomic_open(path) as f:
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
                                '0.05_0.05_1.0, got %r' % spec) from None
    if step <= 0 or end < start:
        raise utils.ConfigError('--sample_trunc_curves needs step > 0 and end >= start, got %r'
                                % spec)
    return [float(v) for v in np.arange(start, end + step, step)]  # the release's range


def to_uint8(images):
    """[-1, 1] floats to uint8 pixels, rounded to nearest."""
    return ((images.float() + 1) * 127.5).round().clamp_(0, 255).to(torch.uint8)


def note_truncation(state_dict, truncation):
    """A note when a converted official generator is sampled at another truncation than the
    one its BN statistics were taken for (convert_pretrained.py records it)."""
    stats_for = (state_dict.get('pretrained') or {}).get('truncation')
    if stats_for is not None and stats_for != truncation:
        print('note: this checkpoint\'s BN statistics are for --truncation %g; sampling with '
              '%g differs from the official model\'s samples' % (stats_for, truncation))


def run(config):
    if config['config_from_name']:
        config = config_from_checkpoint(config)
    config = utils.prepare_config(config)
    config['skip_init'] = True
    config['no_optim'] = True
    device = torch.device(config['device'])
    trunc_stds = truncation_values(config['sample_trunc_curves'])
    if config['truncation'] < 0:
        raise utils.ConfigError('--truncation must be positive (or 0 for none), got %g'
                                % config['truncation'])
    if config['sample_npz'] and config['sample_num_npz'] < 1:
        raise utils.ConfigError('--sample_num_npz must be at least 1, got %d'
                                % config['sample_num_npz'])
    utils.seed_rng(config['seed'])
    torch.backends.cudnn.benchmark = True
    model = importlib.import_module(config['model'])
    experiment_name = config['experiment_name'] or utils.name_from_config(config)
    print('Experiment name is %s' % experiment_name)

    # Metrics need Inception weights and moments: check them before any sampling.
    get_inception_metrics = None
    if config['sample_inception_metrics'] or config['sample_trunc_curves']:
        import inception_utils
        get_inception_metrics = inception_utils.prepare_inception_metrics(
            config['dataset'], config['parallel'], config['no_fid'],
            backend=config['inception_backend'], weights_path=config['inception_weights'] or None,
            device=device, data_root=config['data_root'], kid=config['kid'])

    G = model.Generator(**config).to(device)
    state_dict = {'itr': 0}
    # --use_ema samples from G_ema.pth, loaded into the same network.
    utils.load_weights(None if config['use_ema'] else G, None, state_dict,
                       config['weights_root'], experiment_name, config['load_weights'] or None,
                       G if config['use_ema'] else None, strict=False, load_optim=False)
    G_batch_size = max(config['G_batch_size'], config['batch_size'])
    z_, y_ = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device=device,
                               z_var=config['z_var'])
    truncation = config['truncation']
    if truncation:
        utils.Distribution(z_, 'truncated_normal', truncation=truncation)
    note_truncation(state_dict, truncation)
    if config['G_eval_mode']:
        G.eval()
    sample = functools.partial(utils.sample, G=G, z_=z_, y_=y_, config=config)
    # Sampling runs under --amp's autocast, as in training.
    with utils.config_autocast(config):
        if config['accumulate_stats']:
            utils.accumulate_standing_stats(G, z_, y_, config['n_classes'],
                                            config['num_standing_accumulations'])
        folder = '%s/%s' % (config['samples_root'], experiment_name)
        os.makedirs(folder, exist_ok=True)

        if config['sample_npz']:
            save_npz(sample, config['sample_num_npz'], '%s/samples.npz' % folder, truncation)
        if config['sample_sheets']:
            utils.sample_sheet(G, classes_per_sheet=utils.classes_per_sheet(config),
                               num_classes=config['n_classes'], samples_per_class=10,
                               parallel=config['parallel'], samples_root=config['samples_root'],
                               experiment_name=experiment_name,
                               folder_number=config['sample_sheet_folder_num'], z_=z_,
                               truncation=truncation)
        if config['sample_interps']:
            for fix_z, fix_y in zip([False, False, True], [False, True, False]):
                utils.interp_sheet(G, num_per_sheet=16, num_midpoints=8,
                                   num_classes=config['n_classes'], parallel=config['parallel'],
                                   samples_root=config['samples_root'],
                                   experiment_name=experiment_name,
                                   folder_number=config['sample_sheet_folder_num'], sheet_number=0,
                                   fix_z=fix_z, fix_y=fix_y, device=device,
                                   truncation=truncation)
        if config['sample_random']:
            images, _ = sample()
            utils.save_image(images, '%s/random_samples.jpg' % folder,
                             nrow=int(G_batch_size ** 0.5))

        def get_metrics(z_std):
            """IS/FID (and KID) of the current G, printed as the release prints them."""
            metrics = get_inception_metrics(sample, config['num_inception_images'], num_splits=10,
                                            prints=False)
            IS_mean, IS_std, FID = metrics[:3]
            extra = metrics[3] if len(metrics) > 3 else {}
            out = 'Using %s weights ' % ('ema' if config['use_ema'] else 'non-ema')
            out += 'in %s mode, ' % ('eval' if config['G_eval_mode'] else 'training')
            out += ('with %s %3.3f, ' % ('truncation' if truncation else 'noise variance', z_std))
            out += 'over %d images, ' % config['num_inception_images']
            if config['accumulate_stats'] or not config['G_eval_mode']:
                out += 'with batch size %d, ' % G_batch_size
            if config['accumulate_stats']:
                out += ('using %d standing stat accumulations, '
                        % config['num_standing_accumulations'])
            out += ('Itr %d: PYTORCH UNOFFICIAL Inception Score is %3.3f +/- %3.3f, '
                    'PYTORCH UNOFFICIAL FID is %5.4f' % (state_dict['itr'], IS_mean, IS_std, FID))
            out += ''.join(', %s is %g' % (k, v) for k, v in extra.items())
            print(out)

        if config['sample_inception_metrics']:
            get_metrics(truncation or config['z_var'])
        for std in trunc_stds:
            # With --truncation the curve's values are truncations.
            if truncation:
                utils.Distribution(z_, 'truncated_normal', truncation=std)
            else:
                utils.Distribution(z_, 'normal', mean=0, var=std)
            if config['accumulate_stats']:
                utils.accumulate_standing_stats(G, z_, y_, config['n_classes'],
                                                config['num_standing_accumulations'])
            get_metrics(std)


def main():
    utils.run_cli(run, utils.add_sample_parser(utils.prepare_parser()))


if __name__ == '__main__':
    main()
