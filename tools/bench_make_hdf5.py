"""Benchmark make_hdf5.py against the release's conversion on the same image folder.

    python tools/bench_make_hdf5.py --n_images 2000 --num_workers 2

generates an ImageNet-like folder of JPEGs (sides 250..500 px by default, like
ILSVRC's typical 500x375), converts it with both approaches using the same worker count,
batch size and resolution, and prints images/s for each, their ratio, and how
many pixels the release's float round trip changed.  It also prints the CPU time
per image (all processes, workers included): on a shared machine other tenants
change the wall clock much more than the CPU time, and once every core is busy
images/s is the core count divided by it.  ``--stages`` first times the
per-image steps in this one process: the decode and resize that any exact
conversion must do bound how far make_hdf5.py can get ahead of the release.
``--main_loop`` times each main-process loop alone on ready-made batches: the
most images/s any number of workers could reach.

The release's approach, rebuilt here for comparison only: a DataLoader over the
image folder with CenterCropLongEdge + Resize + ToTensor + Normalize, then
``(255 * ((x + 1) / 2.0)).byte()`` per batch, reopening the HDF5 file and growing
its datasets for every batch.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ConfigError, ToolParser, bounded, run_cli

# isort: split
import resource
import statistics
import tempfile
import time

import h5py
import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

import datasets as dset
import make_hdf5
from files import check_disk, check_fits


def make_folder(root, n_images, n_classes, sizes=(250, 500), seed=0):
    """Write n_images photo-like JPEGs into n_classes class folders under root."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        cls = os.path.join(root, f'class{i % n_classes:03d}')
        os.makedirs(cls, exist_ok=True)
        w, h = (int(s) for s in rng.integers(sizes[0], sizes[1] + 1, 2))
        # Smooth colour fields plus grain: JPEG sizes and decode cost similar
        # to photographs, unlike flat colours or pure noise.
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        grain = rng.normal(0, 12, (h, w, 3))
        arr = np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(cls, f'{i:06d}.jpg'), quality=90)


class _CenterCropLongEdge:
    """Crop to the centred square of side min(w, h), as the release's transform."""

    def __call__(self, img):
        return TF.center_crop(img, min(img.size))


def release_transform(res):
    """The release's ImageNet transform (no augmentation)."""
    return T.Compose([_CenterCropLongEdge(), T.Resize(res), T.ToTensor(),
                      T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def stage_times(paths, res, repeats):
    """Median ms per image of each conversion step, in this process on one thread."""
    transform, crop = release_transform(res), _CenterCropLongEdge()

    def decode(path):
        with open(path, 'rb') as f:
            img = Image.open(f)
            img.load()
        return img

    decoded = [decode(p) for p in paths]
    cropped = [crop(img) for img in decoded]
    steps = {
        'decode (PIL)': (decode, paths),
        'crop': (crop, decoded),
        'resize (PIL)': (lambda img: img.resize((res, res), Image.BILINEAR), cropped),
        'make_hdf5.load_square': (lambda p: make_hdf5.load_square(p, res), paths),
        'release transform': (lambda p: transform(dset.default_loader(p)), paths),
    }
    times = {name: [] for name in steps}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    for _ in range(repeats):
        for name, (fn, args) in steps.items():
            start = time.perf_counter()
            for a in args:
                fn(a)
            times[name].append(1e3 * (time.perf_counter() - start) / len(args))
    torch.set_num_threads(threads)
    return {name: statistics.median(t) for name, t in times.items()}


def release_write(batches, out, n, res, compression):
    """The release's main-process loop: truncating cast, then reopen the file and append."""
    compression = 'lzf' if compression else None
    # The release used chunks of 500 and so failed on folders under 500 images.
    chunk = min(500, n)
    for i, (x, y) in enumerate(batches):
        x = (255 * ((x + 1) / 2.0)).byte().numpy()
        y = y.numpy()
        if i == 0:
            with h5py.File(out, 'w') as f:
                f.create_dataset('imgs', x.shape, dtype='uint8',
                                 maxshape=(n, 3, res, res),
                                 chunks=(chunk, 3, res, res),
                                 compression=compression)[...] = x
                f.create_dataset('labels', y.shape, dtype='int64', maxshape=(n,),
                                 chunks=(chunk,), compression=compression)[...] = y
        else:
            with h5py.File(out, 'a') as f:
                f['imgs'].resize(f['imgs'].shape[0] + x.shape[0], axis=0)
                f['imgs'][-x.shape[0]:] = x
                f['labels'].resize(f['labels'].shape[0] + y.shape[0], axis=0)
                f['labels'][-y.shape[0]:] = y


def release_convert(root, out, res, batch_size, num_workers, index_filename, compression):
    """The release's make_hdf5: its transform in a DataLoader, then its main loop."""
    ds = dset.ImageFolder(root, transform=release_transform(res),
                          index_filename=index_filename)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=False, drop_last=False)
    release_write(loader, out, len(ds), res, compression)
    return len(ds)


def ours_convert(root, out, res, batch_size, num_workers, index_filename, compression):
    """make_hdf5.run on the same folder."""
    config = vars(make_hdf5.prepare_parser().parse_args([]))
    config.update(dataset=index_filename.split('_')[0], dataset_root=root, output=out,
                  resolution=res, n_classes=len(dset.find_classes(root)[0]),
                  batch_size=batch_size, compression=compression,
                  num_workers=num_workers, no_progress=True)
    make_hdf5.run(config)
    with h5py.File(out, 'r') as f:
        return len(f['labels'])


def main_loop_rates(paths, tmp, res, batch_size, n_batches, compression):
    """Images/s of each approach's main-process loop alone, fed ready-made batches.

    No worker can make either approach faster than this: it is the most images/s
    that any number of cores and workers can reach.
    """
    imgs = np.stack([make_hdf5.load_square(p, res) for p in paths[:batch_size]])
    labels = np.arange(len(imgs), dtype=np.int64)
    # What the release's workers hand over for the same pixels: ToTensor + Normalize.
    floats = (torch.from_numpy(imgs).float() / 255 - 0.5) / 0.5
    n = len(imgs) * n_batches
    config = vars(make_hdf5.prepare_parser().parse_args([]))
    config.update(compression=compression, no_progress=True)
    runs = {
        'release': lambda out: release_write(
            ((floats, torch.from_numpy(labels)) for _ in range(n_batches)),
            out, n, res, compression),
        'ours': lambda out: make_hdf5.write_hdf5(
            out, ((imgs, labels, []) for _ in range(n_batches)), n, res, config),
    }
    rates = {}
    for name, run in runs.items():
        out = os.path.join(tmp, f'{name}_main.hdf5')
        start = time.time()
        run(out)
        rates[name] = n / (time.time() - start)
        os.remove(out)
    return rates


def cpu_seconds():
    """User + system CPU time of this process and its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main():
    """Generate the folder (unless given), time both converters, print the table."""
    parser = ToolParser(description=__doc__.split('\n')[0])
    parser.add_argument('--folder', default=None,
                        help='existing class-folder root to use instead of generating')
    parser.add_argument('--n_images', type=bounded(int, '>= 1'), default=2000)
    parser.add_argument('--n_classes', type=bounded(int, '>= 1'), default=10)
    parser.add_argument('--sizes', type=bounded(int, '>= 1'), nargs=2, default=[250, 500],
                        help='range of the generated images\' sides in pixels')
    parser.add_argument('--res', type=bounded(int, '>= 1'), default=128)
    parser.add_argument('--batch_size', type=bounded(int, '>= 1'), default=256)
    parser.add_argument('--num_workers', type=bounded(int, '>= 0'), default=2)
    parser.add_argument('--compression', action='store_true',
                        help='compress both files as the release\'s --compression (LZF)')
    parser.add_argument('--repeats', type=bounded(int, '[0, 1000]'), default=2,
                        help='runs of each approach, alternating; the best counts '
                             '(0: only --stages and --main_loop)')
    parser.add_argument('--stages', type=bounded(int, '>= 0'), default=0, metavar='N',
                        help='first time each per-image step on N images (default: off)')
    parser.add_argument('--main_loop', type=bounded(int, '>= 0'), default=0, metavar='B',
                        help='also time each main-process loop alone on B ready-made '
                             'batches (default: off)')
    run_cli(run, parser, namespace=True)


def run(args):
    """The tool on its parsed flags."""
    if args.sizes[0] > args.sizes[1]:
        raise ConfigError(f'--sizes {args.sizes[0]} {args.sizes[1]}: the smallest side first, '
                          f'then the largest')
    # One generated image at the largest side is held whole while it is drawn and encoded;
    # the JPEGs (at most their raw size) and the two HDF5 files go to the temporary folder.
    check_fits(3 * args.sizes[1] ** 2 * 4, f'a generated image of {args.sizes[1]} px',
               'lower --sizes')
    folder_bytes = 0 if args.folder else args.n_images * 3 * args.sizes[1] ** 2
    check_disk(folder_bytes + 2 * args.n_images * 3 * args.res ** 2, tempfile.gettempdir(),
               f'{args.n_images} images and their HDF5 files', 'lower --n_images or --sizes')
    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder
        if root is None:
            root = os.path.join(tmp, 'images')
            start = time.time()
            make_folder(root, args.n_images, args.n_classes, args.sizes)
            print(f'generated {args.n_images} JPEGs in {time.time() - start:.1f} s')
        index = f'I{args.res}_imgs.npz'
        folder = dset.ImageFolder(root, index_filename=index)  # index built outside timings
        if args.stages:
            ms = stage_times(folder.paths[:args.stages], args.res, max(args.repeats, 3))
            print(f'per image, one process, {args.stages} images:')
            for name, t in ms.items():
                print(f'  {name:24s} {t:6.3f} ms')
            floor = ms['decode (PIL)'] + ms['resize (PIL)']
            print(f'  an exact conversion needs decode + resize = {floor:.3f} ms, so it can '
                  f'be at most {ms["release transform"] / floor:.2f}x the release transform')
        if args.main_loop:
            rates = main_loop_rates(folder.paths, tmp, args.res, args.batch_size,
                                    args.main_loop, args.compression)
            print(f'main-process loop alone, {args.main_loop} ready-made batches: '
                  f'release {rates["release"]:.0f} images/s, '
                  f'make_hdf5.py {rates["ours"]:.0f} images/s '
                  f'({torch.get_num_threads()} torch threads)')
        if args.repeats < 1:
            return
        outs = {'release': os.path.join(tmp, 'release.hdf5'),
                'ours': os.path.join(tmp, 'ours.hdf5')}
        fns = {'release': release_convert, 'ours': ours_convert}
        best, cpu_ms = {}, {'release': [], 'ours': []}
        for _ in range(args.repeats):
            for name in ('release', 'ours'):
                start, cpu_start = time.time(), cpu_seconds()
                n = fns[name](root, outs[name], args.res, args.batch_size,
                              args.num_workers, index, args.compression)
                rate = n / (time.time() - start)
                cpu_ms[name].append(1e3 * (cpu_seconds() - cpu_start) / n)
                best[name] = max(best.get(name, 0.0), rate)
                print(f'{name:8s} {rate:8.1f} images/s  {cpu_ms[name][-1]:.3f} CPU ms/image')
        with h5py.File(outs['release'], 'r') as f:
            a = f['imgs'][:]
        with h5py.File(outs['ours'], 'r') as f:
            b = f['imgs'][:]
    changed = int((a != b).sum())
    print(f'\n{n} images, {args.res}px, batch {args.batch_size}, '
          f'{args.num_workers} workers, {os.cpu_count()} CPUs, '
          f'compression {"lzf" if args.compression else "none"}')
    cpu = {name: statistics.median(t) for name, t in cpu_ms.items()}
    print(f'release approach: {best["release"]:.1f} images/s (best), '
          f'{cpu["release"]:.3f} CPU ms/image (median)')
    print(f'make_hdf5.py:     {best["ours"]:.1f} images/s '
          f'({best["ours"] / best["release"]:.2f}x), {cpu["ours"]:.3f} CPU ms/image '
          f'({cpu["release"] / cpu["ours"]:.2f}x fewer)')
    print(f'pixel values changed by the release\'s float round trip: {changed} of '
          f'{a.size} ({100.0 * changed / a.size:.3f}%)')


if __name__ == '__main__':
    main()
