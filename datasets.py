"""Datasets: image folders, preprocessed HDF5 files, CIFAR and the built-in S32.

Every class takes ``(root, transform=None, load_in_mem=False, **kwargs)`` so that the
dataset table in ``utils`` can build any of them the same way; unknown keyword
arguments are accepted and ignored, as in the release.
"""

import hashlib
import os
import tempfile
import warnings

import h5py
import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils import data

IMG_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                  '.tiff', '.webp']


# ---------------------------------------------------------------------------
# S32: procedurally drawn shapes, a dataset that needs no download
# ---------------------------------------------------------------------------

S32_CLASSES = ['circle', 'square', 'triangle', 'ring', 'hbars', 'vbars',
               'cross', 'diamond', 'checker', 'two_dots']
S32_RES = 32
S32_DEFAULT_PER_CLASS = 5000
# Supersampling factor: shapes are drawn on a finer grid and box-filtered so
# that edges are anti-aliased like a downscaled photograph.
_S32_SUPER = 2
# Images drawn per vectorised step; bounds the float temporaries to ~100 MB.
_S32_BLOCK = 1000


class DatasetError(ValueError):
    """A dataset on disk that cannot be used as it is; the message says what to do."""


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB for arrays of equal shape, all in [0, 1]."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = [np.choose(i, [c[k] for c in choices]) for k in range(3)]
    return np.stack(rgb, axis=-1)


def _s32_mask(label, dx, dy, r):
    """Boolean mask of class ``label``'s shape; dx, dy are offsets from its centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    box = (ax <= r) & (ay <= r)
    if label == 0:  # filled circle
        return dx ** 2 + dy ** 2 <= r ** 2
    if label == 1:  # square
        return (ax <= 0.85 * r) & (ay <= 0.85 * r)
    if label == 2:  # upright triangle: width grows linearly downwards
        return (dy >= -r) & (dy <= 0.8 * r) & (ax <= 0.6 * (dy + r))
    if label == 3:  # ring
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if label == 4:  # horizontal bars
        return box & (np.sin(np.pi * 2.0 * dy / r) > 0)
    if label == 5:  # vertical bars
        return box & (np.sin(np.pi * 2.0 * dx / r) > 0)
    if label == 6:  # plus-shaped cross
        w = 0.3 * r
        return ((ax <= w) & (ay <= r)) | ((ay <= w) & (ax <= r))
    if label == 7:  # diamond
        return ax + ay <= r
    if label == 8:  # checkerboard patch
        cells = np.floor(2.0 * dx / r) + np.floor(2.0 * dy / r)
        return box & (cells % 2 == 0)
    if label == 9:  # two dots side by side
        rd = 0.4 * r
        left = (dx + 0.55 * r) ** 2 + dy ** 2 <= rd ** 2
        right = (dx - 0.55 * r) ** 2 + dy ** 2 <= rd ** 2
        return left | right
    raise ValueError(f'S32 has 10 classes, got label {label!r}')


def _s32_draw(label, n, rng):
    """Draw ``n`` images of one class as uint8 N x 32 x 32 x 3."""
    res, sup = S32_RES, _S32_SUPER
    grid = (np.arange(res * sup, dtype=np.float32) + 0.5) / sup
    yy, xx = grid[None, :, None], grid[None, None, :]

    def col(x):
        return x.astype(np.float32)[:, None, None]

    r = col(rng.uniform(7.0, 12.0, n))
    cx = col(16.0 + rng.uniform(-1, 1, n) * (15.0 - r[:, 0, 0]) * 0.6)
    cy = col(16.0 + rng.uniform(-1, 1, n) * (15.0 - r[:, 0, 0]) * 0.6)
    mask = _s32_mask(label, xx - cx, yy - cy, r).reshape(n, res, sup, res, sup)
    # Box-filter the supersampled mask down to the output grid (summing the
    # strided views is several times faster than mean over two axes).
    cover = np.zeros((n, res, res), np.float32)
    for i in range(sup):
        for j in range(sup):
            cover += mask[:, :, i, :, j]
    cover = (cover / (sup * sup))[..., None]

    # Each class owns a hue family (36 degrees apart) so colour alone is a
    # cue too; saturation and value vary within it.
    hue = (label / 10.0 + rng.uniform(-0.04, 0.04, n)) % 1.0
    fg = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0, n), rng.uniform(0.7, 1.0, n))
    fg = fg.astype(np.float32)
    # Dark, low-saturation background with a gentle linear gradient.
    bg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.0, 0.3, n),
                     rng.uniform(0.05, 0.3, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0, 0.08, n) / 15.5
    pos = np.arange(res, dtype=np.float32) - 15.5
    ramp = (col(np.cos(theta) * amp) * pos[None, None, :]
            + col(np.sin(theta) * amp) * pos[None, :, None])[..., None]
    # Only the ramp can push a dark background below 0; fg never exceeds 1.
    img = bg.astype(np.float32)[:, None, None, :] + ramp
    img += (fg[:, None, None, :] - img) * cover
    img *= 255
    img += 0.5
    return np.maximum(img, 0).astype(np.uint8)


def make_s32(num_per_class=S32_DEFAULT_PER_CLASS, seed=0):
    """Generate S32 as (uint8 N x 32 x 32 x 3 images, int64 labels), deterministic in seed."""
    imgs, labels = [], []
    for label in range(len(S32_CLASSES)):
        # One stream per class, so a class's images do not depend on the others.
        rng = np.random.default_rng([seed, label])
        for start in range(0, num_per_class, _S32_BLOCK):
            n = min(_S32_BLOCK, num_per_class - start)
            imgs.append(_s32_draw(label, n, rng))
            labels.append(np.full(n, label, dtype=np.int64))
    imgs, labels = np.concatenate(imgs), np.concatenate(labels)
    # Interleave the classes so that any prefix of the data is balanced.
    order = np.random.default_rng([seed, 1 << 20]).permutation(len(labels))
    return np.ascontiguousarray(imgs[order]), labels[order]


def _atomic_savez(path, **arrays):
    """np.savez to a temp file in the target folder, then rename over path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix='.npz')
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_s32(root, seed=0, num_per_class=None):
    """Return S32's (imgs, labels), generating and caching them under root on first use."""
    n = S32_DEFAULT_PER_CLASS if num_per_class is None else int(num_per_class)
    suffix = '' if n == S32_DEFAULT_PER_CLASS else f'_n{n}'
    path = os.path.join(root, f'S32_seed{seed}{suffix}.npz')
    if os.path.exists(path):
        with np.load(path) as f:
            return f['imgs'], f['labels']
    imgs, labels = make_s32(n, seed)
    _atomic_savez(path, imgs=imgs, labels=labels)
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


# ---------------------------------------------------------------------------
# Image folders: root/<class>/<image>
# ---------------------------------------------------------------------------

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


def default_loader(path):
    """Decode an image file to RGB exactly as the release does."""
    with open(path, 'rb') as f:
        img = Image.open(f)
        return img.convert('RGB')


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


def check_layout(root, classes, samples, n_classes=None):
    """Raise DatasetError with one clear line when root is not root/<class>/<image>."""
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
            self.data = [self._load(i) for i in range(len(self.paths))]

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
        elif n_classes is not None and len(cached[0]) != n_classes:
            check_layout(self.root, cached[0], cached[1], n_classes)
        return cached

    def _read_index(self, sig):
        """The cached index if its signature matches sig, else None."""
        if not os.path.exists(self.index_path):
            return None
        try:
            with np.load(self.index_path) as f:
                if str(f['signature']) != sig:
                    return None
                for folder, mtime in zip(f['nested'], f['nested_mtimes']):
                    if os.stat(os.path.join(self.root, folder)).st_mtime_ns != mtime:
                        return None
                return list(f['classes']), list(f['paths']), f['labels']
        except (OSError, KeyError, ValueError):
            return None  # an old-format or damaged index is simply rebuilt

    def _write_index(self, sig, nested, classes, rel, labels):
        """Cache the index next to the data; a read-only folder just skips it."""
        mtimes = [os.stat(os.path.join(self.root, f)).st_mtime_ns for f in nested]
        try:
            _atomic_savez(self.index_path, signature=np.array(sig),
                          nested=np.array(nested, dtype=str),
                          nested_mtimes=np.array(mtimes, dtype=np.int64),
                          classes=np.array(classes, dtype=str),
                          paths=np.array(rel, dtype=str), labels=labels)
        except OSError as e:
            warnings.warn(f'could not cache the image index at '
                          f'{self.index_path}: {e}', stacklevel=2)

    def _load(self, index):
        """Decoded and transformed image at index."""
        img = self.loader(self.paths[index])
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


# ---------------------------------------------------------------------------
# Preprocessed HDF5 (written by make_hdf5.py)
# ---------------------------------------------------------------------------

class ILSVRC_HDF5(data.Dataset):
    """HDF5 file with 'imgs' (uint8 N x 3 x H x W) and 'labels'; yields [-1, 1] tensors."""

    def __init__(self, root, transform=None, target_transform=None,
                 load_in_mem=False, train=True, download=False,
                 validate_seed=0, val_split=0, **kwargs):
        self.root = os.path.expanduser(str(root))
        if not os.path.exists(self.root):
            raise FileNotFoundError(
                f'HDF5 file {self.root} not found; create it with make_hdf5.py '
                f'(e.g. python make_hdf5.py --dataset I128 --data_root data)')
        self.transform = transform
        self.target_transform = target_transform
        self.load_in_mem = load_in_mem
        with h5py.File(self.root, 'r') as f:
            self.labels = f['labels'][:].astype(np.int64)
            self.data = f['imgs'][:] if load_in_mem else None
        self.targets = self.labels
        self.num_imgs = len(self.labels)
        self._file, self._pid = None, None

    def _imgs(self):
        """This process's handle on 'imgs': HDF5 handles must not cross a fork."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.root, 'r')
            self._pid = os.getpid()
        return self._file['imgs']

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_file'], state['_pid'] = None, None
        return state

    def __getitem__(self, index):
        img = self.data[index] if self.load_in_mem else self._imgs()[index]
        target = int(self.labels[index])
        # The release's normalisation, kept bit-for-bit so models see the same inputs.
        img = ((torch.from_numpy(img).float() / 255) - 0.5) * 2
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self):
        return self.num_imgs


# ---------------------------------------------------------------------------
# CIFAR: torchvision's readers, with local files by default
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# --num_samples and --mirror_augment (the DiffAugment fork's data flags)
# ---------------------------------------------------------------------------

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
