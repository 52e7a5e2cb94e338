"""Evaluate IS/FID/KID/PRDC between two sources, or save one source's statistics.

    python evaluate.py REAL FAKE [--metrics IS,FID,KID,PRDC] [--inception_backend tf_fid
        --inception_weights pt_inception-2015-12-05-6726825d.pth] [--device cuda]
    python evaluate.py data/my_images --save_stats my_stats.npz

A source is one of:
  - an image folder (every .png/.jpg/.jpeg/.bmp/.webp below it, in sorted order);
  - an npz of images, as sample.py --sample_npz writes (x: uint8 N x 3 x H x W);
  - a statistics file (mu, sigma and optionally real feats: --save_stats's output or a
    calculate_inception_moments.py moments file);
  - `checkpoint`: a generator loaded and sampled as sample.py does, with sample.py's flags
    (--experiment_name or the model flags, --weights_root, --load_weights, --use_ema,
    --truncation, ...), --num_inception_images samples.
FID compares the two; IS is the second source's (images only); KID and PRDC need features of
both (a statistics file holds them when it has 'feats'). The numbers are printed, then one
JSON record with its protocol stamp. --save_stats writes a source's mu, sigma, image count,
backend and up to --kid_feats features, as pytorch-fid's --save-stats does. Bad input: one
line, exit status 2, nothing written.
"""
import flags  # first: a Ctrl-C during the slow imports below is one line (flags.py)

# isort: split
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import inception_utils
import metrics
import utils
from datasets import decode_image, to_float
from files import FileError, check_name, check_npz, check_writable, file_digest, open_regular

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
CHECKPOINT = 'checkpoint'


def prepare_parser():
    """sample.py's flags (for `checkpoint`), the metrics' flags, the sources and --save_stats."""
    parser = utils.add_sample_parser(utils.prepare_parser())
    parser.description = __doc__.split('\n')[0]
    parser.add_argument('sources', nargs='+', metavar='SOURCE',
                        help=f'Image folder, npz of images, statistics file or {CHECKPOINT}: '
                             'REAL FAKE, or one with --save_stats')
    parser.add_argument('--save_stats', type=str, default='',
                        help="Write the one source's statistics to this .npz")
    flags.add_flags(parser, ['--kid_feats'])
    parser.set_defaults(metrics='IS,FID')
    return parser


def _image_files(folder):
    """Every image file below folder, sorted; a FileError when there is none."""
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise FileError(f'image folder {folder} holds no {"/".join(IMAGE_EXTENSIONS)} files')
    return found


def _folder_batches(files, batch_size):
    """uint8 (N, 3, H, W) batches of the files, each batch of one image size."""
    from PIL import Image
    batch = []
    for path in files:
        with open_regular(path, 'image') as f:
            try:
                pixels = np.asarray(decode_image(f), dtype=np.uint8)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise FileError(f'image {path} cannot be decoded ({type(err).__name__})'
                                ) from None
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        if batch and (len(batch) == batch_size or batch[0].shape != image.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    yield torch.stack(batch)


def _npz_image_count(path):
    """The length of an npz's x array, from its header (FileError when it has none)."""
    shape = check_npz(path, 'npz of images').get('x.npy')
    if shape is None:
        raise FileError(f'{path} holds no x array of images (nor mu/sigma statistics)')
    return shape[0] if shape else 0


def _npz_images(path):
    """The x array of an npz of images (uint8 N x 3 x H x W), checked before loading."""
    _npz_image_count(path)
    with np.load(path, allow_pickle=False) as data:
        x = data['x']
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or not all(x.shape):
        raise FileError(f'{path}: x must be uint8 N x 3 x H x W images, got {x.dtype} '
                        f'{tuple(x.shape)}')
    return x


def _is_statistics(path):
    """Whether an npz holds statistics (mu and sigma) rather than images."""
    check_npz(path, 'npz file')
    with np.load(path, allow_pickle=False) as data:
        return 'mu' in data.files and 'sigma' in data.files


def load_statistics(path, backend):
    """{'mu', 'sigma', 'feats' (or None), 'count'} of a statistics file of this backend, with
    every moments file's checks (inception_utils.read_moments_file)."""
    return inception_utils.read_moments_file(path, backend, 'evaluate.py SOURCE --save_stats')


def _checkpoint_sampler(config, device):
    """sample() drawing from the checkpoint sample.py's flags name, and the sampling stamp."""
    import importlib

    import sample as sample_py
    if config['config_from_name']:
        config = sample_py.config_from_checkpoint(config)
    config = utils.prepare_config({**config, 'skip_init': True, 'no_optim': True})
    G = importlib.import_module(config['model']).Generator(**config).to(device)
    state = {'itr': 0}
    utils.load_weights(None if config['use_ema'] else G, None, state, config['weights_root'],
                       utils.experiment_name(config), config['load_weights'] or None,
                       G if config['use_ema'] else None, strict=False, load_optim=False)
    if config['G_eval_mode']:
        G.eval()
    z_, y_ = utils.prepare_z_y(max(config['G_batch_size'], config['batch_size']), G.dim_z,
                               config['n_classes'], device=device, z_var=config['z_var'])
    if config['truncation']:
        utils.attach_sampler(z_, 'truncated_normal', truncation=config['truncation'])
    stamp = {'truncation': config['truncation'], 'z_std': 1.0 if config['truncation']
             else config['z_var'], 'seed': config['seed'], 'itr': state['itr'],
             'weights': 'G_ema' if config['use_ema'] else 'G'}

    def sample():
        with torch.no_grad():
            return utils.sample(G, z_, y_, config)
    return sample, config['num_inception_images'], stamp


def describe(spec):
    """What a source is ('folder', 'images', 'statistics', 'checkpoint'), refusing others."""
    if spec == CHECKPOINT:
        return CHECKPOINT
    if os.path.isdir(spec):
        return 'folder'
    if not os.path.exists(spec):
        raise FileError(f'source {spec} does not exist: give an image folder, an npz of '
                        f'images, a statistics file or {CHECKPOINT}')
    if not spec.endswith('.npz'):
        raise FileError(f'source {spec} is neither a folder nor an .npz file')
    return 'statistics' if _is_statistics(spec) else 'images'


def source_rows(spec, kind, config):
    """How many images (statistics: feature rows) a source gives, known before any Inception
    pass: from the folder's listing, the npz headers or --num_inception_images (None:
    statistics without features)."""
    if kind == CHECKPOINT:
        return config['num_inception_images']
    if kind == 'folder':
        return len(_image_files(spec))
    if kind == 'images':
        return _npz_image_count(spec)
    shape = check_npz(spec, 'statistics').get('feats.npy')
    return shape[0] if shape else None


def source_statistics(spec, kind, config, net, keep, device):
    """{'mu', 'sigma', 'feats', 'count', 'IS' ((mean, std) or None), 'stamp'} of a source."""
    if kind == 'statistics':
        out = load_statistics(spec, config['inception_backend'])
        # Statistics of another width are of no features this network gives (0- or 1-wide
        # ones against themselves gave FID 0).
        n = getattr(net, 'module', net).pool_features
        if len(out['mu']) != n:
            raise inception_utils.InceptionMomentsError(
                f"statistics {spec} hold {len(out['mu'])} features, but the "
                f"{config['inception_backend']} Inception network gives {n}; make them with "
                f'evaluate.py SOURCE --save_stats')
        return {**out, 'IS': None, 'stamp': {}}
    stamp = {}
    if kind == CHECKPOINT:
        sample, num, stamp = _checkpoint_sampler(config, device)
        batches = None
    else:
        if kind == 'folder':
            files = _image_files(spec)
            batches, num = _folder_batches(files, config['batch_size']), len(files)
        else:
            x = _npz_images(spec)
            num = len(x)
            batches = (torch.from_numpy(x[i:i + config['batch_size']])
                       for i in range(0, num, config['batch_size']))

        def sample():
            images = to_float(next(batches).to(device))  # the release's uint8 -> [-1, 1]
            return images, torch.zeros(len(images), dtype=torch.long)
    if num < 2:
        raise FileError(f'source {spec} has {num} image(s); statistics need at least 2')
    feats = metrics.FeatureStats(keep=min(keep, num), seed=config['seed'])
    scores = metrics.InceptionScoreStats(num, min(10, num))
    for pool, logits, _ in inception_utils.iterate_inception_outputs(sample, net, num):
        feats.update(pool)
        scores.update(F.softmax(logits.double(), 1))
    return {'mu': feats.mean, 'sigma': feats.cov, 'feats': feats.feats if keep else None,
            'count': feats.n, 'IS': scores.result(), 'stamp': stamp}


def _source_stamp(spec, kind, stats):
    """A source's part of the protocol: what it is, its image count, its file's sha256."""
    out = {'source': spec, 'kind': kind, 'count': stats['count']}
    if kind in ('images', 'statistics'):
        out['sha256'] = file_digest(spec)['sha256']
    return out


def run(config):
    """Measure (or save) and print; returns the record (or the statistics file's path)."""
    flags.check_flags(config)
    sources = config['sources']
    save = config['save_stats']
    if save:
        if len(sources) != 1:
            raise flags.ConfigError('--save_stats takes exactly one source')
        check_name(os.path.basename(save), '--save_stats file name')
        if not save.endswith('.npz'):
            raise flags.ConfigError(f'--save_stats {save}: the file name must end in .npz')
        check_writable(os.path.dirname(os.path.abspath(save)), '--save_stats')
    elif len(sources) != 2:
        raise flags.ConfigError('give two sources (REAL FAKE), or one with --save_stats')
    names = inception_utils.select_metrics(config['metrics'], config['no_fid'], config['kid'])
    unsupported = set(names) - {'IS', 'FID', 'KID', 'PRDC'}
    if unsupported:
        raise flags.ConfigError(f"evaluate.py computes IS, FID, KID and PRDC, not "
                                f"{', '.join(sorted(unsupported))}")
    kinds = [describe(s) for s in sources]
    if save and kinds[0] == 'statistics':
        raise flags.ConfigError(f'{sources[0]} already holds statistics')
    if not save and {'KID', 'PRDC'} & set(names):
        # Sizes that cannot fit are refused before the sources' Inception passes, not after;
        # a statistics file's own checks (its features' shape) before its sizes, so the first
        # refusal is the one to act on.
        for spec, kind in zip(sources, kinds):
            if kind == 'statistics':
                load_statistics(spec, config['inception_backend'])
        rows = [source_rows(s, k, config) for s, k in zip(sources, kinds)]
        for spec, kind, n in zip(sources, kinds, rows):
            if kind == 'statistics' and n is None:
                raise FileError(f"{'/'.join(sorted({'KID', 'PRDC'} & set(names)))} needs "
                                f'features, and statistics {spec} hold none; make them with '
                                f'evaluate.py SOURCE --save_stats')
        if 'KID' in names:
            metrics.check_kid_sizes(config['kid_subset_size'], *rows, config['kid_subsets'])
        if 'PRDC' in names:
            metrics.check_prdc_k(config['prdc_k'], *rows)
    backend = config['inception_backend']
    device = torch.device(config['device']) if config['device'] else (
        torch.device('cuda' if torch.cuda.is_available() else 'cpu'))
    weights = inception_utils.check_inception_weights(backend, config['inception_weights'] or None)
    net = inception_utils.load_inception_net(config['parallel'], backend, weights, device)
    keep = config['kid_feats'] if save else (
        max(config['kid_subset_size'], flags.DEFAULT_KID_FEATS)
        if {'KID', 'PRDC'} & set(names) else 0)
    stats = [source_statistics(s, k, config, net, keep, device) for s, k in zip(sources, kinds)]
    if save:
        s = stats[0]
        inception_utils.save_inception_moments(save, s['mu'], s['sigma'], backend,
                                               s['feats'], count=s['count'])
        print(f"Saved the statistics of {s['count']} images ({backend} backend) to {save}")
        return save
    real, fake = stats
    record = {}
    if 'IS' in names and fake['IS'] is None:
        # IS is of the fakes' images: statistics have none (the default IS,FID still gives FID).
        if names == ('IS',):
            raise flags.ConfigError(f'IS needs images, and {sources[1]} holds statistics; give '
                                    f'the images or ask for other --metrics')
        print(f'note: no IS: {sources[1]} holds statistics, not images')
    if 'IS' in names and fake['IS'] is not None:
        record['IS_mean'], record['IS_std'] = fake['IS']
    if 'FID' in names:
        record['FID'] = inception_utils.valid_fid(metrics.numpy_calculate_frechet_distance(
            fake['mu'], fake['sigma'], real['mu'], real['sigma']), fake['sigma'], real['sigma'])
    protocol = {'metrics': list(names), 'backend': backend, 'weights': os.path.basename(weights),
                'weights_sha256': file_digest(weights)['sha256'],
                'resize': inception_utils.RESIZE[backend], 'num_fakes': fake['count'],
                'IS_splits': min(10, fake['count']) if fake['IS'] is not None else None,
                'reference': _source_stamp(sources[0], kinds[0], real),
                'fake': _source_stamp(sources[1], kinds[1], fake), **fake['stamp']}
    if 'KID' in names:
        record['KID_mean'], record['KID_std'] = metrics.calculate_kid(
            fake['feats'], real['feats'], num_subsets=config['kid_subsets'],
            subset_size=config['kid_subset_size'], seed=config['seed'], device=device)
        protocol['KID'] = {'subset_size': config['kid_subset_size'],
                           'subsets': config['kid_subsets']}
    if 'PRDC' in names:
        record.update(metrics.compute_prdc(real['feats'], fake['feats'], config['prdc_k'],
                                           device=device))
        protocol['PRDC'] = {'nearest_k': config['prdc_k'], 'real_count': len(real['feats']),
                            'fake_count': len(fake['feats'])}
    for key, value in record.items():
        print(f'{key}: {value:.6g}')
    record['protocol'] = protocol
    print(json.dumps(record))
    return record


def main(argv=None):
    flags.run_cli(run, prepare_parser(), argv)


if __name__ == '__main__':
    main()
