"""Preprocess an image dataset into one HDF5 file, as the release's make_hdf5.py does.

    python make_hdf5.py --dataset I128 --data_root data

reads the class folders under ``data_root/ImageNet`` and writes
``data_root/ILSVRC128.hdf5`` with ``imgs`` (uint8, N x 3 x 128 x 128) and ``labels``
(int64).  ``--dataset S32`` converts the built-in shapes dataset to
``data_root/S32.hdf5``. ``--dataset_root old.hdf5`` rewrites an existing file (one the
release wrote, say) in the layout and compression the flags ask for.

Unlike the release, pixels go straight from the decoded uint8 image into the file
(the release normalised to floats and truncated back to bytes, which can shift a
pixel by one), workers ship bytes rather than floats, the file is written whole
chunks at a time and kept open, and it only gets its final name once complete.
A compressed file holds chunks of about 32 KB by default (one image from 128 px up; the
release: 500 images), so that reading an image in shuffled order decompresses little more
than that image.
"""

import flags  # first: a Ctrl-C during the slow imports below is one line (flags.py)

# isort: split
import os
import re
import sys
import time

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils import data
from tqdm import tqdm

import datasets as dset
from files import (
    atomic_path,
    check_disk,
    check_fits,
    check_hdf5_stored,
    check_target,
    check_writable,
    open_regular,
)


class BadImageError(flags.ConfigError):
    """An input image could not be decoded."""


# The release's chunk length; also how many images the writer buffers at least.
RELEASE_CHUNK = flags.RELEASE_CHUNK
# Bytes of a compressed chunk: LZF and gzip look back 8 and 32 KB, so bigger chunks compress
# hardly better (S32: 1% smaller than 32 KB chunks with 500 images, 6% bigger with one).
COMPRESSED_CHUNK_BYTES = 32 << 10


def default_chunk(compression, res):
    """Images per chunk: the release's for plain files, about 32 KB for compressed ones.

    A compressed chunk is decompressed whole for any image read from it, so it stays small:
    one image from 128 px up. Uncompressed, HDF5 reads an image straight out of a big chunk,
    so the release's layout stays.
    """
    if not compression:
        return RELEASE_CHUNK
    return max(1, COMPRESSED_CHUNK_BYTES // (3 * res * res))


def prepare_parser():
    """Command line of make_hdf5.py: the release's flags plus a few new ones."""
    parser = flags.new_parser('Preprocess an image dataset into an HDF5 file.')
    flags.add_flags(parser, ['--dataset', '--data_root', '--batch_size', '--num_workers'],
                    dataset='I128', batch_size=256, num_workers=16)
    flags.add_flags(parser, ['--chunk_size'])
    parser.add_argument('--compression', action='store_true', default=False,
                        help='Compress the HDF5 datasets')
    parser.add_argument('--compression_filter', type=str, default='lzf', choices=['lzf', 'gzip'],
                        help='Filter used with --compression: lzf, as the release; gzip (level 4) '
                             'makes smaller files more slowly')
    parser.add_argument('--skip_bad', action='store_true', default=False,
                        help='Skip unreadable images (counted in the summary) instead of stopping')
    flags.add_flags(parser, flags.CUSTOM_DATASET_FLAGS)
    parser.add_argument('--output', type=str, default=None,
                        help='Output file instead of data_root/ILSVRC{res}.hdf5')
    parser.add_argument('--no_progress', action='store_true', default=False,
                        help='Do not show the progress bar')
    return parser


# ----------------------------------------------------------------------------
# What to convert.

def dataset_info(name):
    """(resolution, class count, folder under data_root) for a dataset name, or Nones.

    Besides the table's names, any I{res} reads the ImageNet folder at that resolution.
    """
    entry = dset.DATASETS.get(name)
    if entry is not None:
        return entry.resolution, entry.n_classes, entry.root
    match = re.fullmatch(r'I(\d+)', name)
    if match:
        return int(match.group(1)), 1000, 'ImageNet'
    return None, None, None


def output_path(config, res):
    """Where the HDF5 file goes: the file the table's {dataset}_hdf5 entry reads at this
    resolution (S32.hdf5, ILSVRC128.hdf5, ...), else ILSVRC{res}.hdf5 (any I{res}, custom
    datasets)."""
    if config['output']:
        return config['output']
    entry = dset.DATASETS.get(f"{config['dataset']}_hdf5")
    name = entry.root if entry is not None and entry.resolution == res else f'ILSVRC{res}.hdf5'
    return os.path.join(config['data_root'], name)


# ----------------------------------------------------------------------------
# Pixels.

def load_square(path, res):
    """The release's pixels for one file: RGB, centre crop on the long edge, resize.

    Same operations as Image.convert('RGB') (datasets.to_rgb) + CenterCropLongEdge +
    transforms.Resize(res) on a PIL image, minus torchvision's dispatch; returns
    uint8 3 x res x res.
    """
    with open_regular(path, 'image') as f:  # a FIFO or device named x.png would block or never end
        img = dset.decode_image(f)
    w, h = img.size
    side = min(w, h)
    # torchvision's center_crop offsets (Python round, half to even).
    left, top = round((w - side) / 2.0), round((h - side) / 2.0)
    if side != w or side != h:
        img = img.crop((left, top, left + side, top + side))
    if side != res:
        img = img.resize((res, res), Image.BILINEAR)
    return np.asarray(img).transpose(2, 0, 1)


class SquareImages(data.Dataset):
    """Worker-side view of the file list: (uint8 image, label, error text or '')."""

    def __init__(self, paths, labels, res):
        self.paths, self.labels, self.res = paths, labels, res

    def __getitem__(self, index):
        try:
            img = load_square(self.paths[index], self.res)
            err = ''
        # PIL's decoders raise OSError, SyntaxError, struct.error, zlib.error,
        # DecompressionBombError...: every one of them means "unreadable".
        except Exception as e:  # noqa: BLE001
            img = np.zeros((3, self.res, self.res), np.uint8)
            err = f'{type(e).__name__}: {e}'
        return torch.from_numpy(np.ascontiguousarray(img)), int(self.labels[index]), err

    def __len__(self):
        return len(self.paths)


def folder_batches(paths, labels, res, config):
    """Yield (imgs, labels, [(path, error)]) batches decoded by worker processes."""
    loader = data.DataLoader(
        SquareImages(paths, labels, res), batch_size=config['batch_size'],
        shuffle=False, num_workers=config['num_workers'], pin_memory=False,
        drop_last=False, prefetch_factor=4 if config['num_workers'] else None)
    start = 0
    for imgs, ys, errs in loader:
        bad = [(paths[start + i], e) for i, e in enumerate(errs) if e]
        if bad:
            keep = torch.tensor([not e for e in errs])
            imgs, ys = imgs[keep], ys[keep]
        start += len(errs)
        yield imgs.numpy(), ys.numpy().astype(np.int64), bad


def s32_batches(config, batch_size=4096):
    """Yield S32 in the writer's batch format (it is already 32 x 32)."""
    imgs, labels = dset.load_s32(os.path.join(config['data_root'], 'S32'))
    for i in range(0, len(labels), batch_size):
        chunk = imgs[i:i + batch_size].transpose(0, 3, 1, 2)
        yield np.ascontiguousarray(chunk), labels[i:i + batch_size], []


def hdf5_source(path):
    """(image count, resolution) of an HDF5 file to rewrite, refusing one that is not ours."""
    with dset.open_hdf5(path) as f:
        shape, dtype = f['imgs'].shape, f['imgs'].dtype
        check_hdf5_stored(f['imgs'], path, "'imgs'")
        labels = dset.read_labels(f['labels'], path)
    if len(labels) and labels.min() < 0:
        raise flags.ConfigError(f'{path} holds a label of {labels.min()}; labels are class '
                                f'indices from 0: fix the labels')
    if dtype != np.uint8:
        # The writer stores uint8: other values would wrap (uint16 300 -> 44), not convert.
        raise flags.ConfigError(f"{path} holds {dtype} images; make_hdf5.py rewrites uint8 "
                                f'ones only (convert the pixels to 0-255 uint8 first)')
    if shape[2] != shape[3]:
        raise flags.ConfigError(f'{path} holds {shape[2]} x {shape[3]} images; make_hdf5.py '
                                f'writes square ones')
    return shape[0], shape[2]


def hdf5_batches(path):
    """Yield an HDF5 file's images in the writer's batch format, whole chunks per read (so
    each compressed chunk is decompressed once)."""
    with h5py.File(path, 'r') as f:
        imgs, labels = f['imgs'], f['labels']
        chunk = imgs.chunks[0] if imgs.chunks else 1
        step = chunk * -(-RELEASE_CHUNK // chunk)
        for i in range(0, len(labels), step):
            yield imgs[i:i + step], labels[i:i + step].astype(np.int64), []


# ----------------------------------------------------------------------------
# Writing.

class ChunkWriter:
    """Streams images into preallocated HDF5 datasets, whole chunks per write.

    Whole-chunk writes mean each chunk is compressed exactly once; memory is one
    block of at least RELEASE_CHUNK images (a whole number of chunks) whatever the
    dataset size.
    """

    def __init__(self, f, n, res, chunk_size, compression):
        self.chunk = max(1, min(chunk_size, n))
        self.block = min(self.chunk * -(-RELEASE_CHUNK // self.chunk), max(n, self.chunk))
        shape = (n, 3, res, res)
        self.imgs = f.create_dataset(
            'imgs', shape, dtype='uint8', maxshape=shape,
            chunks=(self.chunk, 3, res, res), compression=compression)
        # Labels are read whole: one chunk per block keeps their index small.
        self.labels = f.create_dataset(
            'labels', (n,), dtype='int64', maxshape=(n,),
            chunks=(self.block,), compression=compression)
        self.buf = np.empty((self.block, 3, res, res), np.uint8)
        self.buf_y = np.empty(self.block, np.int64)
        self.fill = 0
        self.count = 0

    def add(self, imgs, labels):
        """Append a batch of uint8 N x 3 x res x res images and their labels."""
        i = 0
        while i < len(labels):
            take = min(self.block - self.fill, len(labels) - i)
            self.buf[self.fill:self.fill + take] = imgs[i:i + take]
            self.buf_y[self.fill:self.fill + take] = labels[i:i + take]
            self.fill += take
            i += take
            if self.fill == self.block:
                self.flush()

    def flush(self):
        """Write the buffered images at the current end of the datasets."""
        if self.fill:
            end = self.count + self.fill
            self.imgs[self.count:end] = self.buf[:self.fill]
            self.labels[self.count:end] = self.buf_y[:self.fill]
            self.count = end
            self.fill = 0

    def finish(self):
        """Flush and shrink the datasets to the images actually written."""
        self.flush()
        if self.count != self.imgs.shape[0]:
            self.imgs.resize(self.count, axis=0)
            self.labels.resize(self.count, axis=0)
        return self.count


def write_hdf5(path, batches, n, res, config):
    """Write batches to path through a temporary file; returns (written, bad list)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    compression = config['compression_filter'] if config['compression'] else None
    chunk = config['chunk_size'] or default_chunk(compression, res)
    bad_all = []
    bar = tqdm(total=n, unit='img', smoothing=0.05, dynamic_ncols=True,
               disable=config['no_progress'], file=sys.stderr)
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, 'w') as f:
            writer = ChunkWriter(f, n, res, chunk, compression)
            for imgs, labels, bad in batches:
                if bad and not config['skip_bad']:
                    bad_path, err = bad[0]
                    # A listed image that is gone: the folder changed under its index
                    # (mtimes put back), which only a new listing brings back.
                    gone = ('does not exist' in str(err) and f'; if the folder changed since it '
                            f"was indexed, delete its {config['dataset']}_imgs.npz to list it "
                            f'again' or '')
                    raise BadImageError(f'cannot read image {bad_path} ({err}); '
                                        f'fix or remove it, or pass --skip_bad{gone}')
                bad_all += bad
                writer.add(imgs, labels)
                bar.update(len(labels) + len(bad))
            count = writer.finish()
    finally:
        bar.close()
    return count, bad_all


def run(config):
    """Convert config['dataset'] to HDF5; returns the output path."""
    flags.check_flags(config)
    name = config['dataset']
    if 'hdf5' in name:
        raise flags.ConfigError(f'{name} is already an HDF5 dataset; pass the source '
                         f'dataset name (e.g. I128)')
    res, n_classes, subdir = dataset_info(name)
    source = config['dataset_root']
    rewrite = source.endswith(('.hdf5', '.h5'))
    if rewrite:
        n, file_res = hdf5_source(source)
        if config['resolution'] not in (0, file_res):
            raise flags.ConfigError(f'{source} holds {file_res} px images, not '
                                    f"--resolution {config['resolution']}")
        res = file_res
    res = config['resolution'] or res
    n_classes = config['n_classes'] or n_classes
    if res is None:
        raise flags.ConfigError(f'unknown dataset {name!r}: pass --resolution (and '
                         f'--n_classes, --dataset_root) for a custom dataset')
    path = output_path(config, res)
    if rewrite:
        batches = hdf5_batches(source)
    elif name == 'S32' and not config['dataset_root']:
        n = dset.S32_DEFAULT_PER_CLASS * len(dset.S32_CLASSES)
        batches = s32_batches(config)
    else:
        root = config['dataset_root'] or os.path.join(config['data_root'], subdir)
        folder = dset.ImageFolder(root, index_filename=f'{name}_imgs.npz',
                                  n_classes=n_classes)
        n = len(folder)
        batches = folder_batches(folder.paths, folder.labels, res, config)
    check_writable(os.path.dirname(os.path.abspath(path)), 'the output folder')
    check_target(path, 'the output')  # a folder, FIFO or device there: before any decoding
    # Before any image is decoded: the loader's batches in flight (prefetched four deep per
    # worker) must fit in memory, and an uncompressed file on the output's disk.
    in_flight = config['batch_size'] * max(1, 4 * config['num_workers'])
    check_fits(in_flight * 3 * res * res, f'{in_flight} decoded images of {res} x {res}',
               'lower --resolution, --batch_size or --num_workers')
    if not config['compression']:
        check_disk(n * 3 * res * res, os.path.dirname(os.path.abspath(path)),
                   f'{n} images of {res} x {res}', 'free space or pass --compression')
    start = time.time()
    count, bad = write_hdf5(path, batches, n, res, config)
    took = time.time() - start
    print(f'Wrote {count} images ({res}x{res}) to {path} in {took:.1f} s '
          f'({(count + len(bad)) / max(took, 1e-9):.0f} images/s); '
          f'skipped {len(bad)} unreadable images')
    for bad_path, err in bad:
        print(f'  skipped {bad_path}: {err}')
    return path


def main(argv=None):
    """Parse the command line and run; bad input or a bad image (named) gets one line on
    stderr and exit status 2, as in the other entry points."""
    flags.run_cli(run, prepare_parser(), argv)


if __name__ == '__main__':
    try:
        main()
    except SystemExit as stop:
        # A write that failed (a full disk) leaves the HDF5 library holding the file, and its
        # clean-up at interpreter exit then crashes (a segfault after the one line): leave
        # without it; the temporary file is already removed.
        if h5py.h5f.get_obj_ids():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.code if isinstance(stop.code, int) else 2)
        raise
