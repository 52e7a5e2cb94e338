"""Benchmark reading make_hdf5.py files through the training loader, shuffled and in order.

    python tools/bench_hdf5_read.py --n_images 20000 --workers 1,2

writes one file per compression (none, LZF, gzip) and chunk layout with make_hdf5.py's own
writer, all holding the same generated photo-like images (smooth colour fields plus grain,
128 px by default), and reads each through the path training uses (datasets.get_data_loaders ->
ILSVRC_HDF5 -> DataLoader, batch --batch_size) with every worker count: in the full shuffle,
in the chunk-aware order of --chunk_window (for files whose compressed chunks are big), and
sequentially. Layouts: `release` is 500 images per chunk, what the release (and this project
before) wrote whatever the compression; `default` is what make_hdf5.py writes now without
--chunk_size.

Each loader figure is images/s after the first batch of every worker (start-up excluded),
over --seconds or until the epoch ends, and in brackets images per CPU-second of all the
reading processes (main and workers, start-up included): what each worker would give on a core
of its own, which on a shared machine the wall clock does not show. "Shuffled" is the loader
alone; "+ to_float" also makes every batch floats in this process on the CPU, as train.py does
after moving a batch to its device (on an accelerator that costs the CPU nothing, so the
loader's figure is the one that counts there). "ILSVRC_HDF5 alone" is images per CPU-second of
indexing the dataset as the loader does, in shuffled order in this one process: the HDF5 read,
without the loader's inter-process transport. It also prints to_float's CPU cost per image and,
with gzip, how many images zlib alone inflates per CPU-second, a floor no layout can beat.
The script also runs on the project's earlier versions (whose loaders gave floats, made in the
workers), for before-and-after figures.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ConfigError, ToolParser, bounded, run_cli

# isort: split
import gc
import resource
import tempfile
import time
import zlib

import h5py
import numpy as np
import torch
import torch.nn.functional as F

import datasets as dset
import make_hdf5
from files import check_disk

# The release's chunk length (spelled out, so the script also runs on older versions of the
# project, for before-and-after figures).
RELEASE_CHUNK = 500
# Older versions' loaders already gave floats.
to_float = getattr(dset, 'to_float', lambda x: x)


def photo_batches(n, res, batch=500, seed=0, grain=4.0):
    """Yield (uint8 B x 3 x res x res images, int64 labels) that compress like photographs."""
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        coarse = torch.rand(b, 3, 6, 6, generator=g) * 255
        img = F.interpolate(coarse, size=(res, res), mode='bicubic', align_corners=False)
        img += torch.randn(img.shape, generator=g) * grain
        imgs = img.round().clamp(0, 255).to(torch.uint8).numpy()
        labels = (np.arange(start, start + b) * 10 // n).astype(np.int64)  # class-sorted
        yield imgs, labels, []


def write_file(path, n, res, compression, chunk):
    """Write the generated images with make_hdf5.py's writer; returns seconds taken."""
    config = {'compression': compression != 'none', 'compression_filter': compression,
              'chunk_size': chunk, 'skip_bad': False, 'no_progress': True}
    start = time.time()
    make_hdf5.write_hdf5(path, photo_batches(n, res), n, res, config)
    return time.time() - start


def cpu_seconds():
    """User + system CPU time of this process and its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def read_rate(path, res, workers, shuffle, window, batch_size, seconds, convert=False):
    """(images/s after start-up, images per CPU-second) of one pass through the loader; with
    convert, this process also makes every batch floats, as the training loop does."""
    loader = dset.get_data_loaders(
        'bench', dataset_root=path, resolution=res, n_classes=10, batch_size=batch_size,
        num_workers=workers, shuffle=shuffle, chunk_window=window, pin_memory=False,
        drop_last=False, seed=0, raw=True)[0]
    cpu = cpu_seconds()
    it = iter(loader)
    total = 0
    for _ in range(max(workers, 1)):
        total += len(next(it)[0])
    start, timed = time.perf_counter(), 0
    for x, _ in it:
        if convert:
            to_float(x)
        timed += len(x)
        if time.perf_counter() - start >= seconds:
            break
    wall = time.perf_counter() - start
    del it  # stops and reaps the workers, so their CPU time is counted
    gc.collect()
    return timed / max(wall, 1e-9), (total + timed) / max(cpu_seconds() - cpu, 1e-9)


def item_rate(path, seconds):
    """Images per CPU-second of ILSVRC_HDF5 alone, indexed as the loader does (raw where the
    version has it) in shuffled order in this process: no transport between processes."""
    ds = dset.ILSVRC_HDF5(path, raw=True)  # older versions ignore raw
    order = dset.epoch_order(len(ds), 0, 0)
    start, n = time.process_time(), 0
    for i in order:
        ds[i]
        n += 1
        if time.process_time() - start >= seconds:
            break
    return n / max(time.process_time() - start, 1e-9)


def inflate_rate(res, n=200):
    """Images per CPU-second zlib alone inflates (gzip's floor: every image is inflated once)."""
    imgs = next(photo_batches(n, res, batch=n))[0]
    packed = [zlib.compress(img.tobytes(), 4) for img in imgs]  # h5py's gzip level
    start = time.process_time()
    for blob in packed:
        zlib.decompress(blob)
    return n / max(time.process_time() - start, 1e-9)


def to_float_cost(res, batch_size, repeats=20):
    """CPU microseconds per image of to_float on uint8 batches, on one thread."""
    x = torch.from_numpy(next(photo_batches(batch_size, res, batch=batch_size))[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    to_float(x)
    start = time.process_time()
    for _ in range(repeats):
        to_float(x)
    torch.set_num_threads(threads)
    return (time.process_time() - start) / (repeats * batch_size) * 1e6


def cell(rates):
    """'images/s (images/CPU-s)' for a table cell."""
    return f'{rates[0]:,.0f} ({rates[1]:,.0f})'


def main():
    """Write the files, read each every way, print a markdown table."""
    parser = ToolParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n_images', type=bounded(int, '>= 1'), default=20000)
    parser.add_argument('--res', type=bounded(int, '>= 1'), default=128)
    parser.add_argument('--batch_size', type=bounded(int, '>= 1'), default=32)
    parser.add_argument('--workers', default='1,2', help='comma-separated worker counts')
    parser.add_argument('--compressions', default='none,lzf,gzip')
    parser.add_argument('--layouts', default='release,default',
                        help='release (500 images per chunk) and/or default (make_hdf5.py now)')
    parser.add_argument('--chunk_window', type=bounded(int, '>= 0'), default=16,
                        help='window of the chunk-aware rows (files with big compressed chunks '
                             'only); 0 skips them')
    parser.add_argument('--seconds', type=bounded(float, '(0, 3600]'), default=5.0,
                        help='timed reading per figure')
    parser.add_argument('--dir', default=None, help='folder for the files (default: a temporary '
                                                    'one, removed afterwards)')
    run_cli(run, parser, namespace=True)


def run(args):
    """The tool on its parsed flags."""
    try:
        workers = [int(w) for w in args.workers.split(',')]
    except ValueError:
        workers = [-1]
    if min(workers) < 0:
        raise ConfigError(f'--workers {args.workers!r} must be worker counts of 0 or more, '
                          f'comma-separated')
    # Each figure reads a batch per worker before its timing starts, then times at least one.
    need = args.batch_size * (max(max(workers), 1) + 1)
    if args.n_images < need:
        raise ConfigError(f'--n_images {args.n_images} leaves no timed batch: each figure reads '
                          f'--batch_size {args.batch_size} per worker first, so it needs '
                          f'{need} or more')
    raw = args.n_images * 3 * args.res ** 2
    # Every compression's file is written in full before it is read.
    n_files = len(args.compressions.split(',')) * len(args.layouts.split(','))
    check_disk(raw * n_files, args.dir or tempfile.gettempdir(),
               f'{n_files} files of {args.n_images} images of {args.res} px',
               'lower --n_images or --res, or pass --dir on a larger disk')
    print(f'{args.n_images} images of {args.res} px ({raw / 1e6:.0f} MB raw), batch '
          f'{args.batch_size}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, '
          f'torch {torch.__version__}')
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for compression in args.compressions.split(','):
            for layout in args.layouts.split(','):
                chunk = (RELEASE_CHUNK if layout == 'release' else
                         make_hdf5.default_chunk(compression != 'none', args.res))
                path = os.path.join(tmp, f'{compression}_{chunk}.hdf5')
                if os.path.exists(path):
                    continue  # uncompressed, both layouts are the release's
                took = write_file(path, args.n_images, args.res, compression, chunk)
                print(f'wrote {os.path.basename(path)} in {took:.1f} s, '
                      f'{os.path.getsize(path) / raw:.2f} of raw')
                with h5py.File(path, 'r') as f:
                    stored_chunk = f['imgs'].chunks[0]  # at most the image count
                # Chunk-aware rows only where a full shuffle is slow (release-style files).
                slow = getattr(dset.ILSVRC_HDF5(path), 'slow_shuffle', False)
                window = args.chunk_window if slow else 0
                for w in workers:
                    figures = [read_rate(path, args.res, w, True, 0, args.batch_size,
                                         args.seconds, convert)
                               for convert in (False, True)]
                    if window:
                        figures.append(read_rate(path, args.res, w, True, window,
                                                 args.batch_size, args.seconds))
                    figures.append(read_rate(path, args.res, w, False, 0, args.batch_size,
                                             args.seconds))
                    cells = [cell(f) for f in figures]
                    if not window:
                        cells.insert(2, '')
                    alone = f'{item_rate(path, args.seconds):,.0f}' if w == workers[0] else ''
                    rows.append([compression, str(stored_chunk),
                                 f'{os.path.getsize(path) / raw:.2f}', alone, str(w)] + cells)
                    print('  ' + ' | '.join(rows[-1]), flush=True)
    print(f'\nload average at the end {os.getloadavg()[0]:.1f}')
    if hasattr(dset, 'to_float'):
        print(f'to_float takes {to_float_cost(args.res, args.batch_size):.0f} CPU-us per image '
              f'(one thread)')
    if 'gzip' in args.compressions:
        print(f'zlib alone inflates {inflate_rate(args.res):,.0f} images per CPU-second')
    print()
    print('| compression | images per chunk | size / raw | ILSVRC_HDF5 alone, shuffled | '
          f'workers | shuffled | shuffled + to_float | shuffled, --chunk_window '
          f'{args.chunk_window} | sequential |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')


if __name__ == '__main__':
    main()
