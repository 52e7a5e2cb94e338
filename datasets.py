"""The data path: datasets (image folders, preprocessed HDF5 files, CIFAR and the built-in
S32), the dataset table, the release's transforms, the samplers, get_data_loaders, and
to_float, which turns the uint8 batches of HDF5 files into the floats the models take.

Every dataset class takes ``(root, transform=None, load_in_mem=False, **kwargs)`` so that the
table can build any of them the same way; unknown keyword arguments are accepted and ignored,
as in the release.
"""
import hashlib
import os
import sys
import warnings

import h5py
import numpy as np
import torch
import torchvision
import torchvision.transforms as transforms
from PIL import Image
from torch.utils import data
from torch.utils.data import DataLoader, Sampler

from files import (  # noqa: F401  (release-era names, kept importable from here)
    ITEM_OVERHEAD,
    MEM_HEADROOM,
    NPZ_ERRORS,
    FileError,
    atomic_open,
    available_memory,
    check_declared,
    check_hdf5_stored,
    check_memory,
    check_name,
    check_npz,
    hdf5_dataset,
    item_nbytes,
    open_regular,
    read_hdf5,
)
from flags import ConfigError, one_line
from s32 import S32_CLASSES, S32_DEFAULT_PER_CLASS, S32_RES, make_s32  # noqa: F401

# torch warns (four lines, at every loader built and every epoch) when --num_workers is above
# its count of cores; the release's defaults (8, make_hdf5.py's 16) are above it on most
# machines, and its line would stand before the one line of a refusal. The workers asked for
# are held to memory instead (utils.prepare_config, make_hdf5.py).
warnings.filterwarnings('ignore', message='This DataLoader will create', category=UserWarning)

IMG_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                  '.tiff', '.webp']


class DatasetError(ConfigError):
    """A dataset on disk that cannot be used as it is; the message says what to do."""


class ImageReadError(DatasetError):
    """One image of a dataset cannot be read; the message names the file.

    Raised while batches are loaded, inside DataLoader workers too. DataLoader raises a
    worker's exception again in the main process as type(error)(message), where message is
    'Caught ImageReadError in DataLoader worker ...' followed by the worker's traceback, whose
    last line is '<module>.ImageReadError: <the original message>'. That line is kept, so the
    run still ends with the one line naming the file.
    """

    def __init__(self, message):
        marker = f'{type(self).__name__}: '
        if message.startswith('Caught ') and marker in message:
            message = message.rstrip().rsplit('\n', 1)[-1].split(marker, 1)[1]
        super().__init__(message)


def _reason(error):
    """An exception as 'Type: message' on one line, cut to 200 characters."""
    return f'{type(error).__name__}: {one_line(error)[:200]}'


def _components(path):
    """The components of a root-relative path read from a file, each a plain name
    (files.check_name), so the path cannot leave the root it is joined to."""
    return [check_name(part, 'path component') for part in str(path).split('/')]


def _atomic_savez(path, **arrays):
    """np.savez through the project's atomic write."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def _refuse_pickles(path, error):
    """Re-raise np.load's refusal of pickled objects as one line naming the file."""
    if 'allow_pickle' in str(error):
        raise DatasetError(f'{path} holds pickled Python objects, which are never loaded; '
                           f'delete it and it will be rebuilt') from None


def load_s32(root, seed=0, num_per_class=None):
    """Return S32's (imgs, labels), generating and caching them under root on first use."""
    n = S32_DEFAULT_PER_CLASS if num_per_class is None else int(num_per_class)
    suffix = '' if n == S32_DEFAULT_PER_CLASS else f'_n{n}'
    path = os.path.join(root, f'S32_seed{seed}{suffix}.npz')
    if os.path.lexists(path):
        return _read_s32_cache(path)
    imgs, labels = make_s32(n, seed)
    _atomic_savez(path, imgs=imgs, labels=labels)
    return imgs, labels


def _read_s32_cache(path):
    """(imgs, labels) of an S32 cache, only once they are what make_s32 writes: uint8 RGB
    images of S32_RES, one integer label of a class each. A damaged or foreign cache is one
    line (DatasetError) saying to delete it, not a traceback at the first batch."""
    def damaged(why):
        return DatasetError(f'S32 cache {path} {why}; delete it and it will be rebuilt')
    try:
        check_npz(path, 'S32 cache')
    except FileError as e:
        raise DatasetError(f'{e}; delete it and it will be rebuilt') from None
    try:
        with open_regular(path, 'S32 cache') as fh, np.load(fh) as f:
            arrays = {key: f[key] for key in ('imgs', 'labels') if key in f}
    except FileError:
        raise
    except NPZ_ERRORS as e:
        _refuse_pickles(path, e)
        raise damaged(f'cannot be read ({type(e).__name__})') from None
    if len(arrays) != 2:
        raise damaged('lacks its imgs or labels array')
    imgs, labels = arrays['imgs'], arrays['labels']
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1:] != (S32_RES, S32_RES, 3):
        raise damaged(f'holds images of {imgs.dtype} {imgs.shape}, not uint8 N x {S32_RES} x '
                      f'{S32_RES} x 3')
    if len(imgs) == 0:  # make_s32 writes at least one image of each class
        raise damaged('holds no images')
    if labels.dtype.kind not in 'iu' or labels.shape != (len(imgs),):
        raise damaged(f'holds labels of {labels.dtype} {labels.shape}, not {len(imgs)} integers')
    if len(labels) and (labels.min() < 0 or labels.max() >= len(S32_CLASSES)):
        raise damaged(f'holds labels outside 0-{len(S32_CLASSES) - 1}')
    return imgs, labels


class S32(data.Dataset):
    """The built-in shapes dataset; behaves like torchvision's CIFAR10 (PIL image, int label)."""

    classes = S32_CLASSES

    def __init__(self, root, transform=None, load_in_mem=False, seed=0,
                 target_transform=None, num_per_class=None, **kwargs):
        self.root = os.path.expanduser(str(root))
        self.transform = transform
        self.target_transform = target_transform
        self.data, self.labels = load_s32(self.root, seed, num_per_class)
        self.targets = self.labels

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index], mode='RGB')
        target = int(self.labels[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self):
        return len(self.labels)


# ----------------------------------------------------------------------------
# Image folders: root/<class>/<image>.

def is_image_file(filename):
    """Whether filename has one of the image extensions (case-insensitive)."""
    return filename.lower().endswith(tuple(IMG_EXTENSIONS))


def find_classes(dir):
    """Sorted class-folder names of dir and the name -> index map."""
    classes = sorted(e.name for e in os.scandir(dir) if e.is_dir())
    return classes, {c: i for i, c in enumerate(classes)}


def make_dataset(dir, class_to_idx, folders=None):
    """List (path, class index) for every image under each class folder, in release order.

    Every folder walked is also appended to the list `folders`, when one is given.
    """
    images = []
    for target in sorted(class_to_idx):
        d = os.path.join(dir, target)
        for folder, _, fnames in sorted(os.walk(d)):
            if folders is not None:
                folders.append(folder)
            for fname in sorted(fnames):
                if is_image_file(fname):
                    images.append((os.path.join(folder, fname),
                                   class_to_idx[target]))
    return images


# Modes of more than 8 bits a channel whose range the file states: 16-bit greyscale.
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def to_rgb(img):
    """An opened image's pixels as 8-bit RGB, decoded: PIL's convert('RGB'), which the release
    used, except for pixels of more than 8 bits (convert saturates 16-bit greyscale at 255 and
    draws floats black). 16-bit greyscale (a PNG's I;16, or its I) is scaled by 255/65535; 32-bit
    integer and float pixels, whose range no file states, are refused (ValueError)."""
    if img.mode == 'RGB':
        img.load()  # convert('RGB') would only copy
        return img
    if img.mode in SIXTEEN_BIT_MODES or (img.mode == 'I' and img.format == 'PNG'):
        pixels = np.asarray(img).astype(np.float64) * (255 / 65535)
        return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)).convert('RGB')
    if img.mode in ('I', 'F'):
        kind = 'floating-point' if img.mode == 'F' else '32-bit integer'
        raise ValueError(f'its pixels are {kind} ({img.mode} mode), whose range the file does '
                         f'not state: convert it to 8 bits a channel')
    return img.convert('RGB')


def decode_image(f):
    """The pixels of an open image file as 8-bit RGB (to_rgb): the one decoder of image
    folders, make_hdf5.py and evaluate.py. PIL's DecompressionBombWarning (an image of more
    than 89 M pixels, which it still decodes) is not shown; past twice that PIL refuses it
    (DecompressionBombError), as every caller reports."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        return to_rgb(Image.open(f))


def default_loader(path):
    """Decode an image file to RGB as the release does (to_rgb); a FIFO or device named like
    an image is refused (FileError) rather than waited on."""
    with open_regular(path, 'image') as f:
        return decode_image(f)


def folder_signature(root):
    """Cheap fingerprint of root's layout: entry names plus class-folder mtimes.

    Adding, removing or renaming an image changes its folder's mtime, so the
    index is rebuilt without listing a million files on every start (the index
    also keeps the mtimes of folders nested inside class folders).
    """
    parts = []
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.is_dir():
            parts.append(f'd {e.name} {e.stat().st_mtime_ns}')
        elif is_image_file(e.name):
            parts.append(f'f {e.name}')
    return hashlib.sha1('\n'.join(parts).encode()).hexdigest()


def index_digest(sig, classes, paths, labels):
    """sha256 binding an image index's listing to the folder signature it was made under."""
    h = hashlib.sha256(str(sig).encode())
    for part in (classes, paths):
        h.update('\0'.join(map(str, part)).encode() + b'\1')
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _nested_image_dirs(class_dir):
    """Subfolders of class_dir that hold images, and whether class_dir holds any directly."""
    direct, nested = False, []
    for e in os.scandir(class_dir):
        if e.is_file() and is_image_file(e.name):
            direct = True
        elif e.is_dir() and any(is_image_file(f) for _, _, fs in os.walk(e.path)
                                for f in fs):
            nested.append(e.name)
    return direct, nested


# A class needs this many images: a class of one image cannot show the generator any variety
# (D memorises it), and one with none is a stray folder; both are most often a misplaced file
# or folder rather than data.
MIN_CLASS_IMAGES = 2


def class_counts(labels, n_classes):
    """Images per class, for class indices 0..n_classes-1."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


def check_layout(root, classes, samples, n_classes=None):
    """Raise DatasetError with one clear line when root is not root/<class>/<image> with at
    least MIN_CLASS_IMAGES images in every class."""
    if not classes:
        top = [f for f in os.listdir(root) if is_image_file(f)]
        if top:
            raise DatasetError(
                f'{root} holds {len(top)} images but no class subfolders: put '
                f'each class in its own folder ({root}/<class>/<image>)')
        raise DatasetError(f'no class folders and no images found in {root}')
    if not samples:
        raise DatasetError(f'no images ({", ".join(IMG_EXTENSIONS)}) found under '
                           f'the class folders of {root}')
    counts = class_counts([label for _, label in samples], len(classes))
    few = np.flatnonzero(counts < MIN_CLASS_IMAGES)
    if len(few) == 1:
        i = few[0]
        raise DatasetError(
            f'class folder {os.path.join(root, classes[i])} holds {counts[i]} '
            f'image{"" if counts[i] == 1 else "s"}; '
            f'a class needs at least {MIN_CLASS_IMAGES}: add images or remove the folder')
    if len(few):
        names = ', '.join(f'{classes[i]!r} ({counts[i]})' for i in few[:5])
        raise DatasetError(
            f'{len(few)} class folders of {root} hold fewer than {MIN_CLASS_IMAGES} images '
            f'({names}{", ..." if len(few) > 5 else ""}); a class needs at least '
            f'{MIN_CLASS_IMAGES}: add images or remove those folders')
    if len(classes) == 1 or (n_classes is not None and len(classes) != n_classes):
        direct, nested = _nested_image_dirs(os.path.join(root, classes[0]))
        if len(classes) == 1 and not direct and len(nested) > 1:
            raise DatasetError(
                f'images are one level too deep: {root} has a single class '
                f'folder {classes[0]!r} whose {len(nested)} subfolders hold the '
                f'images; point the data root at '
                f'{os.path.join(root, classes[0])} instead')
    if n_classes is not None and len(classes) != n_classes:
        raise DatasetError(
            f'found {len(classes)} class folders in {root} but the dataset has '
            f'{n_classes} classes; fix the folder layout or pass the right '
            f'class count')


class ImageFolder(data.Dataset):
    """Images in root/<class>/<image>; the index of paths is cached as root/index_filename."""

    def __init__(self, root, transform=None, target_transform=None,
                 loader=default_loader, load_in_mem=False,
                 index_filename='imagenet_imgs.npz', n_classes=None, **kwargs):
        self.root = os.path.expanduser(str(root))
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise DatasetError(f'image folder {self.root} is a file, not a folder; give the '
                               f'folder of class folders')
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f'image folder {self.root} does not exist')
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader
        self.load_in_mem = load_in_mem
        self.index_path = os.path.join(self.root, os.path.basename(index_filename))
        self.classes, rel_paths, self.labels = self._index(n_classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.paths = [os.path.join(self.root, p) for p in rel_paths]
        self.targets = self.labels
        self.imgs = list(zip(self.paths, self.labels.tolist()))
        if load_in_mem:
            # The first item, transformed, sizes them all.
            first = self._load(0)
            check_memory(len(self.paths) * item_nbytes(first),
                         f'{len(self.paths)} images of {self.root}')
            self.data = [first] + [self._load(i) for i in range(1, len(self.paths))]

    def _index(self, n_classes):
        """Classes, root-relative paths and labels, from the cache when it is current."""
        sig = folder_signature(self.root)
        cached = self._read_index(sig)
        if cached is None:
            classes, class_to_idx = find_classes(self.root)
            folders = []
            samples = make_dataset(self.root, class_to_idx, folders)
            check_layout(self.root, classes, samples, n_classes)
            rel = [os.path.relpath(p, self.root) for p, _ in samples]
            labels = np.array([t for _, t in samples], dtype=np.int64)
            cached = (classes, rel, labels)
            # Class folders are in sig; folders below them are checked one by one.
            nested = [os.path.relpath(f, self.root) for f in folders]
            nested = [f for f in nested if os.sep in f]
            self._write_index(sig, nested, *cached)
        elif ((n_classes is not None and len(cached[0]) != n_classes)
              or not len(cached[0])
              or (class_counts(cached[2], len(cached[0])) < MIN_CLASS_IMAGES).any()):
            # An index cached by a version without the class-size rule, or a crafted one, is
            # held to the rule too.
            check_layout(self.root, cached[0], list(zip(cached[1], cached[2])), n_classes)
        return cached

    def _read_index(self, sig):
        """The cached index if its signature matches sig, else None."""
        if not os.path.exists(self.index_path):
            return None
        try:
            # Not a regular file (a FIFO): a FileError, and the index is rebuilt over it.
            check_npz(self.index_path, 'image index')
            with open_regular(self.index_path, 'image index') as fh, np.load(fh) as f:
                if str(f['signature']) != sig:
                    return None
                for folder, mtime in zip(f['nested'], f['nested_mtimes']):
                    if os.stat(os.path.join(self.root, *_components(folder))).st_mtime_ns != mtime:
                        return None
                classes, paths, labels = list(f['classes']), list(f['paths']), f['labels']
                # An index edited after it was written (entries dropped) no longer matches
                # the digest of what was listed.
                if str(f['digest']) != index_digest(sig, classes, paths, labels):
                    return None
        except ConfigError:
            return None  # check_npz: declared sizes beyond the file or memory
        except NPZ_ERRORS as e:
            _refuse_pickles(self.index_path, e)
            return None  # an old-format or damaged index is simply rebuilt
        # Names from a file: each path component must be a plain name, each label a class.
        try:
            classes = [check_name(str(c), 'class') for c in classes]
            paths = [os.path.join(*_components(p)) for p in paths]
        except ConfigError:
            return None
        if (labels.ndim != 1 or labels.dtype.kind not in 'iu' or len(labels) != len(paths)
                or (len(labels) and not 0 <= labels.min() <= labels.max() < len(classes))):
            return None
        # What the listing implies, the index must say: each image once, labelled by the
        # class folder it is in (swapped labels or repeated paths would train silently).
        if len(set(paths)) != len(paths) or any(
                p.split(os.sep, 1)[0] != classes[y] for p, y in zip(paths, labels)):
            return None
        return classes, paths, labels.astype(np.int64)

    def _write_index(self, sig, nested, classes, rel, labels):
        """Cache the index next to the data; a read-only folder just skips it."""
        mtimes = [os.stat(os.path.join(self.root, f)).st_mtime_ns for f in nested]
        try:
            _atomic_savez(self.index_path, signature=np.array(sig),
                          digest=np.array(index_digest(sig, classes, rel, labels)),
                          nested=np.array(nested, dtype=str),
                          nested_mtimes=np.array(mtimes, dtype=np.int64),
                          classes=np.array(classes, dtype=str),
                          paths=np.array(rel, dtype=str), labels=labels)
        except OSError as e:
            warnings.warn(f'could not cache the image index at '
                          f'{self.index_path}: {e}', stacklevel=2)

    def _load(self, index):
        """Decoded and transformed image at index; a file that cannot be decoded (truncated,
        a decompression bomb, not an image) raises ImageReadError naming it."""
        path = self.paths[index]
        try:
            img = self.loader(path)
        except FileError as e:
            raise ImageReadError(str(e)) from None
        except Exception as e:  # whatever the decoder raises, the file is at fault
            raise ImageReadError(f'image {path} cannot be read ({_reason(e)}); remove or '
                                 f'replace the file') from None
        if self.transform is not None:
            img = self.transform(img)
        return img

    def __getitem__(self, index):
        img = self.data[index] if self.load_in_mem else self._load(index)
        target = int(self.labels[index])
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self):
        return len(self.paths)

    def __repr__(self):
        return (f'Dataset {type(self).__name__}\n    Number of datapoints: '
                f'{len(self)}\n    Root Location: {self.root}')


# ----------------------------------------------------------------------------
# Preprocessed HDF5 (written by make_hdf5.py).

# Every shuffled read decompresses a whole chunk: past this many bytes (5 images of 128 px;
# make_hdf5.py's compressed chunks hold 32 KB, the release's 24.6 MB at 128 px), it costs
# milliseconds per image and get_data_loaders warns.
SLOW_CHUNK_BYTES = 256 << 10
_warned_slow = set()


def _next_prime(n):
    """The smallest prime >= n (HDF5 wants a prime number of chunk-cache slots)."""
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def open_hdf5(path):
    """path opened for reading, once it is known to be a regular file holding 'imgs'
    (N x 3 x H x W) and N 'labels'; otherwise a DatasetError saying what is wrong with it."""
    # h5py would wait forever on a FIFO: the kind of file is checked first.
    open_regular(path, 'HDF5 file').close()
    try:
        f = h5py.File(path, 'r')
    except OSError as e:
        raise DatasetError(f'{path} is not a readable HDF5 file ({e}); write it with '
                           f'make_hdf5.py') from None
    try:
        imgs, labels = hdf5_dataset(f, 'imgs', path), hdf5_dataset(f, 'labels', path)
    except ConfigError:
        f.close()
        raise
    if not isinstance(imgs, h5py.Dataset) or not isinstance(labels, h5py.Dataset):
        problem = f"{path} has no 'imgs' and 'labels' datasets"
    elif imgs.ndim != 4 or imgs.shape[1] != 3 or labels.shape != (imgs.shape[0],):
        problem = (f"{path}: 'imgs' {imgs.shape} and 'labels' {labels.shape} are not "
                   f'N x 3 x H x W images with N labels')
    elif labels.dtype.kind not in 'iu':
        problem = f"{path} holds {labels.dtype} labels, not integers"
    else:
        try:
            # Each read takes one image whole: its declared size must fit in memory.
            check_declared(imgs.dtype.itemsize * int(np.prod(imgs.shape[1:])), 'one image',
                           path)
        except ConfigError:
            f.close()
            raise
        return f
    f.close()
    raise DatasetError(f'{problem}; write it with make_hdf5.py')


def read_labels(labels, path):
    """An HDF5 'labels' dataset as int64, once its declared size is checked: against the
    memory available (the stored labels and their int64 copy) and, when stored unfiltered,
    against the file's length, so a header declaring billions of labels reads nothing."""
    if labels.dtype.kind not in 'iu':
        raise DatasetError(f"{path} holds {labels.dtype} labels; labels are integer class "
                           f'indices: write the file with make_hdf5.py')
    n = len(labels)
    unfiltered = labels.id.get_create_plist().get_nfilters() == 0
    check_declared(labels.dtype.itemsize * n, f'its {n} labels', path,
                         limit=os.path.getsize(path) if unfiltered else None)
    check_declared((labels.dtype.itemsize + 8) * n, f'its {n} labels', path)
    stored = read_hdf5(labels, slice(None), path)
    # uint64 past int64 would wrap to negative class indices, not convert.
    if stored.dtype.kind == 'u' and n and stored.max() > np.iinfo(np.int64).max:
        raise DatasetError(f'{path} holds a label of {stored.max()}, beyond int64; labels are '
                           f'class indices from 0: fix the labels')
    return stored.astype(np.int64)


def normalize(img):
    """uint8 pixels to the release's [-1, 1] float32, ((x / 255) - 0.5) * 2, on the CPU."""
    return img.float().div_(255).sub_(0.5).mul_(2)  # in place: it runs for every image


# normalize's 256 values, computed once on the CPU. to_float looks pixels up here instead of
# recomputing the formula on the batch's device: CUDA divides by a Python number by multiplying
# with its float32 reciprocal, which for 126 of the 256 pixel values differs from true division
# in the last bit.
_PIXEL_FLOATS = normalize(torch.arange(256, dtype=torch.uint8))
_pixel_floats = {}  # _PIXEL_FLOATS on each device used


def to_float(x):
    """A batch as the models take it: uint8 pixels (HDF5 loaders) become the floats
    ILSVRC_HDF5 gives by default, bit for bit on any device; floats pass unchanged.

    Call it after moving the batch to its device: the loader then carries a quarter of the
    bytes, and on an accelerator the conversion costs nothing.
    """
    if x.dtype != torch.uint8:
        return x
    table = _pixel_floats.get(x.device)
    if table is None:
        table = _pixel_floats[x.device] = _PIXEL_FLOATS.to(x.device)
    return table.index_select(0, x.reshape(-1).int()).view(x.shape)


class ILSVRC_HDF5(data.Dataset):
    """HDF5 file with 'imgs' (uint8 N x 3 x H x W) and 'labels'; yields [-1, 1] tensors, or
    with raw=True the stored uint8 ones, for to_float to normalise where the batch is used
    (a transform gets the tensor the item would otherwise be).

    A compressed chunk is decompressed whole whenever one of its images is read, so each
    process keeps the last `cache_chunks` chunks of a compressed file in HDF5's chunk cache
    (a chunk-aware sampler reads a window of that many chunks at a time). Uncompressed chunks
    are not cached: HDF5 then reads each image straight from the file, the fastest for random
    access.
    """

    def __init__(self, root, transform=None, target_transform=None,
                 load_in_mem=False, train=True, download=False,
                 validate_seed=0, val_split=0, cache_chunks=1, raw=False, **kwargs):
        self.root = os.path.expanduser(str(root))
        if not os.path.exists(self.root):
            raise FileNotFoundError(
                f'HDF5 file {self.root} not found; create it with make_hdf5.py '
                f'(e.g. python make_hdf5.py --dataset I128 --data_root data)')
        self.transform = transform
        self.target_transform = target_transform
        self.load_in_mem = load_in_mem
        self.raw = raw
        with open_hdf5(self.root) as f:
            imgs, labels = f['imgs'], f['labels']
            if imgs.dtype != np.uint8:
                # normalize and to_float map 0-255 pixels; other values would train as they are.
                raise DatasetError(f'{self.root} holds {imgs.dtype} images; training reads '
                                   f'uint8 pixels (0-255) and normalises them itself: write '
                                   f'the file with make_hdf5.py')
            self.image_shape = tuple(imgs.shape[1:])
            if load_in_mem:
                check_memory(imgs.dtype.itemsize * int(np.prod(imgs.shape)),
                             f'the {len(imgs)} images of {self.root}')
            self.labels = read_labels(labels, self.root)
            check_hdf5_stored(labels, self.root, "'labels'")
            check_hdf5_stored(imgs, self.root, "'imgs'")
            # Images per chunk (1 for a contiguous dataset), and whether chunks go through
            # filters (compression) that make a read decompress the whole chunk.
            self.chunk_len = imgs.chunks[0] if imgs.chunks else 1
            self.chunk_nbytes = imgs.dtype.itemsize * int(np.prod(imgs.chunks or imgs.shape[1:]))
            self.compressed = imgs.id.get_create_plist().get_nfilters() > 0
            self.compression = imgs.compression  # 'lzf', 'gzip', ... or None
            self.data = read_hdf5(imgs, slice(None), self.root) if load_in_mem else None
        self.targets = self.labels
        self.num_imgs = len(self.labels)
        self.cache = {}
        if self.compressed:
            nbytes = max(self.chunk_nbytes * max(int(cache_chunks), 1), 1 << 20)
            self.cache = {'rdcc_nbytes': nbytes,
                          'rdcc_nslots': _next_prime(100 * (nbytes // self.chunk_nbytes))}
        self._file, self._dset, self._pid = None, None, None

    @property
    def slow_shuffle(self):
        """Whether a full shuffle reads this file slowly: big compressed chunks."""
        return (not self.load_in_mem and self.compressed
                and self.chunk_nbytes > SLOW_CHUNK_BYTES)

    def _imgs(self):
        """This process's handle on 'imgs': HDF5 handles must not cross a fork.

        The dataset handle is kept, not reopened per image: its chunk cache lives with it.
        """
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.root, 'r', **self.cache)
            self._dset = self._file['imgs']
            self._pid = os.getpid()
        return self._dset

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_file'], state['_dset'], state['_pid'] = None, None, None
        return state

    def __getitem__(self, index):
        # A copy of an in-memory image, so that no transform can change the array.
        if self.load_in_mem:
            img = self.data[index].copy()
        else:
            try:
                img = self._imgs()[index]
            except Exception as e:  # a damaged chunk, or the file changed under the run
                raise ImageReadError(f'{self.root}: image {index} cannot be read '
                                     f'({_reason(e)}); the file is damaged: write it again '
                                     f'with make_hdf5.py') from None
        target = int(self.labels[index])
        img = torch.from_numpy(img)
        if not self.raw:
            img = normalize(img)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self):
        return self.num_imgs


def warn_slow_shuffle(dataset):
    """One line on stderr, once per file, when shuffled reading of dataset will be slow."""
    if not getattr(dataset, 'slow_shuffle', False) or dataset.root in _warned_slow:
        return
    _warned_slow.add(dataset.root)
    gzip = ' --compression_filter gzip' if dataset.compression == 'gzip' else ''
    print(f'warning: {dataset.root} holds {dataset.chunk_len} compressed images per chunk, so '
          f'each shuffled image decompresses {dataset.chunk_nbytes / 1e6:.1f} MB and training '
          f'will wait for data; rewrite it in small chunks with `python make_hdf5.py '
          f'--dataset_root {dataset.root} --output {dataset.root} --compression{gzip}`, or '
          f'pass --chunk_window 64 (chunk-aware shuffling, see docs/data.md) or --load_in_mem',
          file=sys.stderr)


# ----------------------------------------------------------------------------
# CIFAR: torchvision's readers, with local files by default.

def _holdout_mask(labels, val_split, seed):
    """Boolean mask of a per-class random validation fraction of labels."""
    rng = np.random.RandomState(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[rng.choice(idx, round(val_split * len(idx)), replace=False)] = True
    return mask


class CIFAR10(torchvision.datasets.CIFAR10):
    """CIFAR-10 from root/cifar-10-batches-py; downloads only with download=True."""

    def __init__(self, root, train=True, transform=None, target_transform=None,
                 download=False, validate_seed=0, val_split=0, load_in_mem=True,
                 **kwargs):
        root = os.path.expanduser(str(root))
        self.root = root
        if not download and not self._check_integrity():
            raise FileNotFoundError(
                f'{self.base_folder} not found or incomplete at '
                f'{os.path.join(root, self.base_folder)}: put the extracted '
                f'python version of the dataset there, or pass --download')
        super().__init__(root, train=train, transform=transform,
                         target_transform=target_transform, download=download)
        labels = np.asarray(self.targets, dtype=np.int64)
        if val_split > 0:
            # The validation split is carved out of the training batches.
            keep = _holdout_mask(labels, val_split, validate_seed) != train
            self.data, labels = self.data[keep], labels[keep]
            self.targets = labels.tolist()
        self.labels = labels


class CIFAR100(CIFAR10):
    """CIFAR-100 from root/cifar-100-python; downloads only with download=True."""

    base_folder = torchvision.datasets.CIFAR100.base_folder
    url = torchvision.datasets.CIFAR100.url
    filename = torchvision.datasets.CIFAR100.filename
    tgz_md5 = torchvision.datasets.CIFAR100.tgz_md5
    train_list = torchvision.datasets.CIFAR100.train_list
    test_list = torchvision.datasets.CIFAR100.test_list
    meta = torchvision.datasets.CIFAR100.meta


# ----------------------------------------------------------------------------
# --num_samples and --mirror_augment (the DiffAugment fork's data flags).

def subset_indices(n, num_samples, seed=0):
    """The DiffAugment fork's --num_samples rule: numpy's legacy generator seeded with seed
    picks num_samples of range(n) without replacement, in the order drawn (not balanced)."""
    if num_samples > n:
        raise DatasetError(f'--num_samples {num_samples} exceeds the {n} images of the '
                           f'training set: ask for at most {n}')
    return np.random.RandomState(seed).choice(n, num_samples, replace=False)


class LimitedData(data.Dataset):
    """A dataset seen through an index list (None: all of it), each image flipped
    horizontally at random when mirror is set. Works on any dataset yielding (C,H,W) tensors."""

    def __init__(self, dataset, indices=None, mirror=False):
        self.dataset = dataset
        self.indices = indices
        self.mirror = mirror

    def __getitem__(self, index):
        img, target = self.dataset[index if self.indices is None else int(self.indices[index])]
        # The draw torchvision's RandomHorizontalFlip makes, from the same generator.
        if self.mirror and torch.rand(1) < 0.5:
            img = img.flip(-1)
        return img, target

    def __len__(self):
        return len(self.dataset) if self.indices is None else len(self.indices)


def limit_data(dataset, num_samples=None, mirror=False, seed=0):
    """dataset restricted to --num_samples seeded random images and/or randomly mirrored;
    dataset itself when neither is asked for."""
    if num_samples is None and not mirror:
        return dataset
    indices = None if num_samples is None else subset_indices(len(dataset), num_samples, seed)
    return LimitedData(dataset, indices, mirror)


# ----------------------------------------------------------------------------
# Start-up validation: what the first step will read, checked before anything is written.

def check_training_set(dataset, config):
    """Refuse (DatasetError, one line) a training set the models configured by config cannot
    take: labels outside [0, n_classes) (an embedding lookup fails at the first step, on CUDA
    with a device-side assert that kills the process), or images that are not
    3 x resolution x resolution (resolution_and_classes).

    Every dataset class keeps its labels in memory, so they are all checked here. An HDF5
    file's image shape comes from its header (its dtype was checked when it was opened); any
    other dataset's first item is loaded, with the random number generators restored
    afterwards, so that augmentations draw nothing the training run would have drawn.
    """
    resolution, n_classes = resolution_and_classes(config)
    base = dataset.dataset if isinstance(dataset, LimitedData) else dataset
    where = getattr(base, 'root', type(base).__name__)
    labels = np.asarray(base.labels)
    if labels.dtype.kind not in 'iu':
        raise DatasetError(f'{where}: labels are {labels.dtype}, not integer class indices')
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(
            f'{where}: labels run from {labels.min()} to {labels.max()}, but the dataset has '
            f'{n_classes} classes (0 to {n_classes - 1}); pass the right --n_classes or fix '
            f'the labels')
    shape = getattr(base, 'image_shape', None)
    if shape is None and len(base):
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            img = base[0][0]
        np.random.set_state(np_state)
        shape = tuple(getattr(img, 'shape', ()))
    if shape is not None and shape != (3, resolution, resolution):
        got = ' x '.join(str(d) for d in shape) or 'not an image tensor'
        raise DatasetError(
            f'{where} yields images of {got}, but the model takes 3 x {resolution} x '
            f'{resolution} (--resolution, or the dataset table); make the data at that '
            f'resolution (make_hdf5.py) or pass the matching --resolution')


# ----------------------------------------------------------------------------
# The dataset table.

class DatasetEntry:
    """One row of the dataset table."""

    def __init__(self, cls, root, resolution, n_classes, classes_per_sheet):
        self.cls, self.root = cls, root
        self.resolution, self.n_classes = resolution, n_classes
        self.classes_per_sheet = classes_per_sheet


# One table instead of the release's five parallel dicts (which are derived below for scripts
# that import them). root is relative to --data_root.
DATASETS = {
    'I32':       DatasetEntry(ImageFolder, 'ImageNet', 32, 1000, 50),
    'I64':       DatasetEntry(ImageFolder, 'ImageNet', 64, 1000, 50),
    'I128':      DatasetEntry(ImageFolder, 'ImageNet', 128, 1000, 20),
    'I256':      DatasetEntry(ImageFolder, 'ImageNet', 256, 1000, 20),
    'I32_hdf5':  DatasetEntry(ILSVRC_HDF5, 'ILSVRC32.hdf5', 32, 1000, 50),
    'I64_hdf5':  DatasetEntry(ILSVRC_HDF5, 'ILSVRC64.hdf5', 64, 1000, 50),
    'I128_hdf5': DatasetEntry(ILSVRC_HDF5, 'ILSVRC128.hdf5', 128, 1000, 20),
    'I256_hdf5': DatasetEntry(ILSVRC_HDF5, 'ILSVRC256.hdf5', 256, 1000, 20),
    'C10':       DatasetEntry(CIFAR10, 'cifar', 32, 10, 10),
    'C100':      DatasetEntry(CIFAR100, 'cifar', 32, 100, 100),
    'S32':       DatasetEntry(S32, 'S32', 32, 10, 10),
    'S32_hdf5':  DatasetEntry(ILSVRC_HDF5, 'S32.hdf5', 32, 10, 10),
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


def check_dataset(config):
    """Refuse a dataset that is neither in the table nor described by the custom flags."""
    if config['dataset'] not in DATASETS and not (
            config.get('dataset_root') and config.get('resolution') and config.get('n_classes')):
        raise ConfigError(f"unknown dataset {config['dataset']!r}: use one of "
                          f"{', '.join(DATASETS)}, or pass --dataset_root, --resolution and "
                          f'--n_classes for your own')


def resolution_and_classes(config):
    """(resolution, n_classes): the flags', else the dataset table's."""
    entry = DATASETS.get(config['dataset'])
    return (config.get('resolution') or entry.resolution,
            config.get('n_classes') or entry.n_classes)


def dataset_source(config):
    """(dataset class, root path) for the configured dataset."""
    entry = DATASETS.get(config['dataset'])
    if config.get('dataset_root'):
        root = config['dataset_root']
        cls = ILSVRC_HDF5 if root.endswith(('.hdf5', '.h5')) else ImageFolder
    else:
        root = os.path.join(config['data_root'], entry.root)
        cls = entry.cls
    return cls, root


def get_dataset(dataset, data_root='data', augment=False, load_in_mem=False, resolution=0,
                n_classes=0, dataset_root='', download=False, chunk_window=0, raw=False,
                **kwargs):
    """The training set with the release's transforms, values in [-1, 1].

    An HDF5 file read with a chunk window keeps that many chunks in each process's cache.
    With raw, an HDF5 file yields its uint8 pixels, which to_float makes those values.
    """
    config = {'dataset': dataset, 'data_root': data_root, 'dataset_root': dataset_root}
    which_dataset, root = dataset_source(config)
    image_size = resolution or DATASETS[dataset].resolution
    small = dataset in ('C10', 'C100', 'S32')
    if which_dataset is ILSVRC_HDF5:
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
    ds_kwargs = {'index_filename': f'{dataset}_imgs.npz'}
    if n_classes and which_dataset is ImageFolder:
        ds_kwargs['n_classes'] = n_classes
    if which_dataset is ILSVRC_HDF5:
        ds_kwargs['cache_chunks'] = max(chunk_window, 1)
        ds_kwargs['raw'] = raw
    if download:
        ds_kwargs['download'] = True
    return which_dataset(root=root, transform=train_transform, load_in_mem=load_in_mem,
                         **ds_kwargs)


# ----------------------------------------------------------------------------
# Samplers and loaders.

def epoch_order(n, epoch, seed, shuffle=True, chunk=1, window=0):
    """The sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1.

    With window > 0 the permutation is chunk-aware: the chunks (runs of `chunk` consecutive
    indices, as an HDF5 file stores them) are shuffled, taken `window` at a time, and the
    indices of each window are shuffled among themselves. Every index still comes once.
    """
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    if window <= 0:
        return torch.randperm(n, generator=g).tolist()
    n_chunks = -(-n // chunk)
    slot = torch.empty(n_chunks, dtype=torch.long)  # each chunk's place in the shuffled order
    slot[torch.randperm(n_chunks, generator=g)] = torch.arange(n_chunks)
    order = torch.randperm(n, generator=g)
    # A stable sort by window keeps the random order inside each window.
    return order[torch.sort(slot[order // chunk] // window, stable=True).indices].tolist()


def chunk_len(data_source):
    """Consecutive indices the dataset stores together (an HDF5 file's chunk), else 1."""
    return max(int(getattr(data_source, 'chunk_len', 1)), 1)


class EpochSampler(Sampler):
    """One epoch of indices from a given position, split across ranks.

    Unlike DataLoader's RandomSampler it draws nothing from the global RNG and can start
    mid-epoch, so a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, data_source, shuffle=True, seed=0, rank=0, world_size=1, chunk_window=0):
        self.n = len(data_source)
        self.shuffle, self.seed = shuffle, seed
        self.chunk, self.window = chunk_len(data_source), chunk_window
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        """Select the epoch, skipping the first `start` samples of this rank."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = epoch_order(self.n, self.epoch, self.seed, self.shuffle, self.chunk, self.window)
        order = order[:self.n - self.n % self.world_size]  # equal shares for every rank
        return iter(order[self.rank::self.world_size][self.start:])

    def __len__(self):
        return max(self.n // self.world_size - self.start, 0)


class MultiEpochSampler(Sampler):
    """Shuffled indices for all num_epochs epochs at once, starting start_itr batches in.

    Epochs are generated lazily, one seeded permutation each (chunk-aware with chunk_window,
    as in epoch_order); ranks take interleaved samples of the global stream.
    """

    def __init__(self, data_source, num_epochs, start_itr=0, batch_size=128, seed=0, rank=0,
                 world_size=1, chunk_window=0):
        self.data_source = data_source
        self.chunk, self.window = chunk_len(data_source), chunk_window
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
                order = epoch_order(n, epoch, self.seed, True, self.chunk, self.window)
            yield order[pos % n]
            pos += w

    def __len__(self):
        return max(self._total() // self.world_size - self.start_itr * self.batch_size, 0)


# The least a data-loader worker process takes of its own (a forked Python with torch, before
# it decodes anything): what --num_workers asks for is held to memory through it.
WORKER_NBYTES = 50 << 20


def get_data_loaders(dataset, data_root=None, augment=False, batch_size=64, num_workers=8,
                     shuffle=True, load_in_mem=False, hdf5=False, pin_memory=True,
                     drop_last=True, start_itr=0, num_epochs=500, use_multiepoch_sampler=False,
                     seed=0, rank=0, world_size=1, chunk_window=0, raw=False, **kwargs):
    """A list holding the training loader, as the release returns it.

    With the multi-epoch sampler one pass covers every epoch; otherwise call
    `loader.sampler.set_epoch(epoch, start)` before each epoch. chunk_window > 0 shuffles
    chunk-aware (epoch_order). With raw an HDF5 file's batches carry uint8 pixels, a quarter
    of the bytes for the workers to ship: pass every batch through to_float once it is on its
    device (train.py does; without raw, the release's float batches).
    """
    train_set = get_dataset(dataset, data_root, augment, load_in_mem, chunk_window=chunk_window,
                            raw=raw, **kwargs)
    if rank == 0 and (shuffle or use_multiepoch_sampler) and not chunk_window:
        warn_slow_shuffle(train_set)
    # --augment already flips, so --mirror_augment adds a flip only without it.
    train_set = limit_data(train_set, kwargs.get('num_samples'),
                           kwargs.get('mirror_augment') and not augment, seed)
    if use_multiepoch_sampler:
        sampler = MultiEpochSampler(train_set, num_epochs, start_itr, batch_size, seed, rank,
                                    world_size, chunk_window)
        drop_last = False
    else:
        sampler = EpochSampler(train_set, shuffle, seed, rank, world_size, chunk_window)
    # A private generator keeps worker seeding off the global RNG that training draws from.
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler,
                        # Pinned pages serve only copies to an accelerator.
                        num_workers=num_workers, drop_last=drop_last,
                        pin_memory=pin_memory and torch.accelerator.is_available(),
                        generator=torch.Generator().manual_seed(seed),
                        persistent_workers=False)
    return [loader]
