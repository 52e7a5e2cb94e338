"""Inception networks and moments files for the metrics, with two Inception backends.

The metrics' math (IS, FID, KID, PRDC) lives in metrics.py; the release's names for it
(calculate_inception_score, numpy/torch_calculate_frechet_distance, torch_cov, ...) are
re-exported here so that code written for the release keeps working.

Backends:
  'torchvision'  torchvision's ImageNet Inception-v3 with the release's
                 preprocessing (the release's choice; its numbers are not
                 comparable to published ones).
  'tf_fid'       the TF-ported FID Inception used by pytorch-fid and by
                 published FIDs (1008 classes, TF-style pooling).

Both wrappers take images in [-1, 1] of any size and return
(pool features (N, 2048), logits (N, num_classes)).

"""
import functools
import hashlib
import os
import urllib.request

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from checkpoints import (
    CheckpointError,
    check_loaded_tensors,
    load_error_reason,
    load_zip_checkpoint,
)
from distributed import is_distributed, pick_device
from files import (
    NPZ_ERRORS,
    atomic_open,
    check_declared,
    check_npz,
    declared_nbytes,
    file_digest,
    hdf5_dataset,
    open_regular,
)
from flags import DEFAULT_KID_FEATS, FLOAT32_MAX, ConfigError

# The math lives in metrics; the release's names for it stay importable from here.
from metrics import (  # noqa: F401
    METRICS,
    FeatureStats,
    InceptionScoreStats,
    MetricsError,
    as_float64,
    calculate_inception_score,
    calculate_intra_fid,
    calculate_kid,
    check_kid_sizes,
    compute_prdc,
    numpy_calculate_frechet_distance,
    torch_calculate_frechet_distance,
    torch_cov,
)

BACKENDS = ('torchvision', 'tf_fid')
WEIGHT_FILES = {
    'torchvision': 'inception_v3_google-0cc3c7bd.pth',
    'tf_fid': 'pt_inception-2015-12-05-6726825d.pth',
}
TORCHVISION_URL = ('https://download.pytorch.org/models/'
                   + WEIGHT_FILES['torchvision'])
TF_FID_NUM_CLASSES = 1008
# Pool features of both backends' Inception-v3: the length of a moments file's mu. Each wrapped
# network states its count as pool_features (a stand-in network in tests has its own).
POOL_FEATURES = 2048
# check_moments' tolerances, relative to sigma's scale: the asymmetry (of max |sigma|) and the
# negative eigenvalues (of trace(sigma), which bounds every eigenvalue of a PSD matrix) that
# rounding leaves in a covariance, also one stored in float32. Beyond them it is not one.
SYMMETRY_TOL = 1e-6
PSD_TOL = 1e-6
# Value the release reports for FID when it is not computed.
NO_FID = 9999.0


class InceptionWeightsError(ConfigError):
    """Inception weights could not be found, fetched or loaded."""


class InceptionMomentsError(ConfigError):
    """A dataset's Inception moments file is missing or unusable."""


# ----------------------------------------------------------------------------
# Networks.

class WrapInception(nn.Module):
    """torchvision Inception-v3 giving (pool, logits), as the release."""

    pool_features = POOL_FEATURES

    def __init__(self, net):
        super().__init__()
        self.net = net
        # Buffers (not parameters) so that they follow .to() but never
        # appear among trainable weights; non-persistent so the state dict
        # holds the Inception weights only.
        self.register_buffer(
            'mean', torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1),
            persistent=False)
        self.register_buffer(
            'std', torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1),
            persistent=False)

    def forward(self, x):
        """Map [-1, 1] images to (pool (N, 2048), logits (N, 1000))."""
        x = ((x + 1.) / 2.0 - self.mean) / self.std
        # The release resizes with align_corners=True; keeping it keeps
        # release-made moments files comparable.
        x = _resize_299(x, align_corners=True)
        net = self.net
        x = net.Conv2d_1a_3x3(x)
        x = net.Conv2d_2a_3x3(x)
        x = net.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = net.Conv2d_3b_1x1(x)
        x = net.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a',
                     'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e',
                     'Mixed_7a', 'Mixed_7b', 'Mixed_7c'):
            x = getattr(net, name)(x)
        pool = torch.mean(x.flatten(2), 2)
        logits = net.fc(F.dropout(pool, training=False))
        return pool, logits


def _resize_299(x, align_corners):
    """Bilinearly resize a batch to 299x299 unless it already is."""
    if x.shape[2] != 299 or x.shape[3] != 299:
        x = F.interpolate(x, size=(299, 299), mode='bilinear',
                          align_corners=align_corners)
    return x


def _avg_pool_no_pad(x):
    """3x3 stride-1 average pool that, as TF does, ignores the padding."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1,
                        count_include_pad=False)


def _max_pool_same(x):
    """3x3 stride-1 max pool keeping the spatial size."""
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class _TFInceptionA(tv_inception.InceptionA):
    """InceptionA whose pooling branch excludes padding (TF semantics)."""

    def forward(self, x):
        """Concatenate the four branches along channels."""
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b5, bd, bp], 1)


class _TFInceptionC(tv_inception.InceptionC):
    """InceptionC whose pooling branch excludes padding (TF semantics)."""

    def forward(self, x):
        """Concatenate the four branches along channels."""
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f'branch7x7dbl_{i}')(bd)
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b7, bd, bp], 1)


class _TFInceptionE(tv_inception.InceptionE):
    """InceptionE with TF pooling: padding-free average, or max (Mixed_7c)."""

    def __init__(self, in_channels, pool='avg'):
        super().__init__(in_channels)
        self.pool_fn = _avg_pool_no_pad if pool == 'avg' else _max_pool_same

    def forward(self, x):
        """Concatenate the (split) branches along channels."""
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        bp = self.branch_pool(self.pool_fn(x))
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionV3(nn.Module):
    """The TF-ported FID Inception; state-dict keys match the public .pth."""

    def __init__(self, num_classes=TF_FID_NUM_CLASSES):
        super().__init__()
        conv = tv_inception.BasicConv2d
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = _TFInceptionA(192, pool_features=32)
        self.Mixed_5c = _TFInceptionA(256, pool_features=64)
        self.Mixed_5d = _TFInceptionA(288, pool_features=64)
        self.Mixed_6a = tv_inception.InceptionB(288)
        self.Mixed_6b = _TFInceptionC(768, channels_7x7=128)
        self.Mixed_6c = _TFInceptionC(768, channels_7x7=160)
        self.Mixed_6d = _TFInceptionC(768, channels_7x7=160)
        self.Mixed_6e = _TFInceptionC(768, channels_7x7=192)
        self.Mixed_7a = tv_inception.InceptionD(768)
        self.Mixed_7b = _TFInceptionE(1280, pool='avg')
        self.Mixed_7c = _TFInceptionE(2048, pool='max')
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        """Map 299x299 inputs in [-1, 1] to (pool (N, 2048), logits)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a',
                     'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e',
                     'Mixed_7a', 'Mixed_7b', 'Mixed_7c'):
            x = getattr(self, name)(x)
        pool = torch.mean(x.flatten(2), 2)
        return pool, self.fc(pool)


class WrapFIDInception(nn.Module):
    """FID Inception wrapper: [-1, 1] images of any size to (pool, logits)."""

    pool_features = POOL_FEATURES

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        """The FID network already expects [-1, 1]; only resize."""
        # pytorch-fid's resize (align_corners=False), as published FIDs use.
        return self.net(_resize_299(x, align_corners=False))


def build_inception_net(backend='torchvision'):
    """Build a backend's bare network with untrained weights (no wrapper)."""
    _check_backend(backend)
    if backend == 'tf_fid':
        return FIDInceptionV3()
    # aux_logits=True so that torchvision's released state dict loads
    # strictly; init_weights=False skips a slow init overwritten anyway.
    return tv_inception.inception_v3(weights=None, aux_logits=True,
                                     transform_input=False,
                                     init_weights=False)


def wrap_inception_net(net, backend='torchvision'):
    """Wrap a bare network so it maps [-1, 1] images to (pool, logits)."""
    _check_backend(backend)
    return WrapFIDInception(net) if backend == 'tf_fid' else WrapInception(net)


def _check_backend(backend):
    """Refuse unknown backend names."""
    if backend not in BACKENDS:
        raise ConfigError(f'unknown Inception backend {backend!r}; '
                          f'choose one of {", ".join(BACKENDS)}')


def default_weights_path(backend='torchvision'):
    """Where weights are looked for when no path is given (torch hub)."""
    _check_backend(backend)
    return os.path.join(torch.hub.get_dir(), 'checkpoints',
                        WEIGHT_FILES[backend])


def _weights_error(backend, path, reason):
    """Build the one-line error telling the user which flag to pass."""
    name = WEIGHT_FILES[backend]
    return InceptionWeightsError(
        f'{backend} Inception weights {name} {reason} (looked for {path}); '
        f'pass --inception_weights PATH pointing to {name}')


def _download_torchvision_weights(path, timeout=30):
    """Fetch torchvision's Inception-v3 weights to path (needs the network).

    A timeout keeps a firewalled machine from hanging at start-up; the file
    is checked against the hash prefix in its name and renamed into place
    only when complete.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    expected = WEIGHT_FILES['torchvision'].rsplit('-', 1)[1].split('.')[0]
    digest = hashlib.sha256()
    with atomic_open(path) as dst, \
            urllib.request.urlopen(TORCHVISION_URL, timeout=timeout) as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
        if not digest.hexdigest().startswith(expected):
            raise OSError('downloaded file has the wrong hash')


def check_inception_weights(backend='torchvision', weights_path=None):
    """Return the path of usable weights or raise InceptionWeightsError.

    Cheap enough to call at start-up, before any training: it only checks
    that the file exists, fetching torchvision's default file if the
    network allows.
    """
    _check_backend(backend)
    path = weights_path or default_weights_path(backend)
    if os.path.lexists(path):
        # A FIFO, a device or a link to one is there, and not the file: open_regular says so.
        open_regular(path, f'{backend} Inception weights').close()
        return path
    if not weights_path and backend == 'torchvision':
        try:
            _download_torchvision_weights(path)
        except Exception as err:  # any network/file failure means "no weights"
            raise _weights_error(
                backend, path,
                f'not found and download failed ({type(err).__name__})',
            ) from err
        if os.path.isfile(path):
            return path
    raise _weights_error(backend, path, 'not found')


def _load_state_dict_file(net, path, backend):
    """Load weights strictly, tolerating only missing num_batches_tracked."""
    try:
        state = load_zip_checkpoint(path)
    except Exception as err:  # refused, truncated or not a torch file
        raise _weights_error(backend, path, f'unreadable ({load_error_reason(err)})') from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                              for k, v in state.items()):
        raise _weights_error(backend, path, 'does not hold a state dict of tensors by name')
    try:
        check_loaded_tensors(state, path)
    except CheckpointError as err:
        raise _weights_error(backend, path, f'refused ({err})') from None
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise _weights_error(backend, path, 'has wrong shapes') from err
    missing = [k for k in result.missing_keys
               if not k.endswith('num_batches_tracked')]
    if missing or result.unexpected_keys:
        raise _weights_error(
            backend, path, f'has mismatched keys ({len(missing)} missing, '
            f'{len(result.unexpected_keys)} unexpected)')


def load_inception_net(parallel=False, backend='torchvision',
                       weights_path=None, device=None):
    """Build a backend's wrapped Inception, load its weights, eval mode."""
    path = check_inception_weights(backend, weights_path)
    net = build_inception_net(backend)
    _load_state_dict_file(net, path, backend)
    net = wrap_inception_net(net, backend).to(pick_device(device)).eval()
    if parallel and torch.cuda.device_count() > 1:
        net = nn.DataParallel(net)
    return net


# ----------------------------------------------------------------------------
# Activations and moments.

def _net_device(net):
    """Device holding the network's weights."""
    return next(net.parameters()).device


def _gather_ranks(t):
    """Concatenate t (same shape on every rank) over the DDP ranks; t itself without DDP."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def check_net_outputs(images, pool, logits):
    """Refuse (MetricsError) a batch whose Inception features or logits are not finite,
    before any statistic takes them in: blamed on the images when they hold NaN or Inf, else
    on the network's weights (finite images, NaN features: a damaged --inception_weights)."""
    if torch.isfinite(pool).all() and torch.isfinite(logits).all():
        return
    if not torch.isfinite(images).all():
        raise MetricsError('the images hold NaN or Inf, so their Inception features do too; '
                           'no statistic was computed from them')
    raise MetricsError('the Inception network gives NaN or Inf features for finite images: '
                       'its weights are damaged; check --inception_weights (or the backend\'s '
                       'default file)')


def iterate_inception_outputs(sample, net, num_images):
    """Yield (pool, logits, labels) batches for exactly num_images sampled images.

    Under DDP every rank samples its own batch and all ranks see every rank's outputs, so
    the metrics come from all ranks' images and agree everywhere.
    """
    device = _net_device(net)
    seen = 0
    while seen < num_images:
        # Grad mode is thread-wide: keep no_grad from spanning the yield.
        with torch.no_grad():
            images, labels = sample()
            if len(images) == 0:
                raise ValueError('sample() returned no images')
            # Inception always runs in float32, as in the release, even when G samples
            # under --amp: the moments it is compared with are float32 too.
            with torch.autocast(device.type, enabled=False):
                images = images.to(device).float()
                pool, logits = net(images)
            check_net_outputs(images, pool, logits)
            labels = torch.as_tensor(labels, device=device)
            pool, logits, labels = (_gather_ranks(t)[:num_images - seen]
                                    for t in (pool, logits, labels))
        seen += pool.shape[0]
        yield pool, logits, labels


def accumulate_inception_activations(sample, net, num_inception_images=50000):
    """Pool features, softmax probabilities and labels of exactly N samples, as the release.

    Features and probabilities are float32 on the CPU.
    """
    pool, probs, labels = [], [], []
    for p, lg, y in iterate_inception_outputs(sample, net, num_inception_images):
        pool.append(p.float().cpu())
        probs.append(F.softmax(lg.float(), 1).cpu())
        labels.append(y.cpu())
    return torch.cat(pool, 0), torch.cat(probs, 0), torch.cat(labels, 0)


def accumulate_inception_stats(sample, net, num_inception_images=50000,
                               num_splits=10, keep_feats=0, seed=0):
    """Streaming (FeatureStats of pool features, InceptionScoreStats)."""
    feats = FeatureStats(keep=keep_feats, seed=seed)
    scores = InceptionScoreStats(num_inception_images, num_splits)
    for pool, logits, _ in iterate_inception_outputs(sample, net, num_inception_images):
        feats.update(pool)
        scores.update(F.softmax(logits.double(), 1))
    return feats, scores


def moments_filename(dataset):
    """'{dataset}_inception_moments.npz' without a trailing '_hdf5' suffix."""
    return dataset.removesuffix('_hdf5') + '_inception_moments.npz'


def moments_command(dataset, data_root='data', backend='torchvision'):
    """The command line that makes a dataset's moments file."""
    cmd = (f'python calculate_inception_moments.py --dataset {dataset} '
           f'--data_root {data_root}')
    if backend != 'torchvision':
        cmd += f' --inception_backend {backend}'
    return cmd


def find_moments_file(dataset, data_root='data'):
    """Path of the moments file: data_root first, then the working dir."""
    name = moments_filename(dataset)
    for folder in (data_root, os.getcwd()):
        if folder is not None and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def save_inception_moments(path, mu, sigma, backend, feats=None, count=None):
    """Write mu, sigma, backend (and optional real pool feats and the image count) atomically."""
    _check_backend(backend)
    # The one writer of moments files: what no reader would accept is never written.
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()
            and (feats is None or np.isfinite(feats).all())):
        raise MetricsError(f'{path} was not written: its moments hold NaN or Inf (the '
                           f'Inception features were not finite)')
    arrays = {'mu': as_float64(mu), 'sigma': as_float64(sigma),
              'backend': np.array(backend)}
    if count is not None:
        arrays['count'] = np.array(int(count), dtype=np.int64)
    if feats is not None and len(feats):
        arrays['feats'] = np.asarray(feats, dtype=np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def load_inception_moments(dataset, data_root='data', backend='torchvision',
                           need_feats=False):
    """Load {'mu', 'sigma', 'path', 'count'[, 'feats']}, refusing another backend's moments.

    'count' is the number of images the moments are of (None in files made before it was
    recorded).
    """
    path = find_moments_file(dataset, data_root)
    if path is None:
        raise InceptionMomentsError(
            f'Inception moments file {moments_filename(dataset)} not found '
            f'in {data_root} or {os.getcwd()}; make it with: '
            f'{moments_command(dataset, data_root, backend)}')
    command = moments_command(dataset, data_root, backend)
    out = read_moments_file(path, backend, command, feats=need_feats)
    if need_feats and out['feats'] is None:
        raise InceptionMomentsError(f'Inception moments {path} hold no real features for KID; '
                                    f'recompute them with: {command}')
    if not need_feats:
        del out['feats']
    return {**out, 'path': path}


def _image_count(count, path):
    """A moments file's image count: a 0-d integer array (a float one would be cast: inf
    overflows, 1e300 and 2.5 become counts no one took)."""
    if count.ndim != 0 or count.dtype.kind not in 'iu':
        raise InceptionMomentsError(f'Inception moments {path}: the image count is '
                                    f'{count.dtype} {count.shape}, not one integer')
    return int(count)


def known_backend(value, what, command):
    """The backend a moments file records, which must be one of BACKENDS: any other value (a
    number, a name of no backend, control characters) is a damaged file, and advising
    `--inception_backend` with it would name a choice that does not exist."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in 'SU':
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode('utf-8', 'replace')
    if isinstance(value, str) and value in BACKENDS:
        return value
    shown = ascii(value.item() if isinstance(value, np.ndarray) and value.size == 1
                  else value)[:60]
    raise InceptionMomentsError(f'{what} record the backend {shown}, which is none of '
                                f'{", ".join(BACKENDS)}: the file is damaged; recompute them '
                                f'with: {command}')


def read_moments_file(path, backend, command, feats=True):
    """{'mu', 'sigma' (float64), 'count' (None when unrecorded), 'feats' (None when absent or
    not asked for)} of a moments or statistics .npz, read without unpickling anything, only
    after every array's declared size is checked against the file (check_npz), refusing
    another backend's and whatever check_moments refuses. Every failure is one
    InceptionMomentsError ending with `recompute them with: command`."""
    try:
        check_npz(path, 'Inception moments')
        with np.load(path, allow_pickle=False) as data:
            # Files without a 'backend' entry were written by the release, which only knew
            # torchvision's Inception.
            file_backend = (known_backend(data['backend'], f'Inception moments {path}', command)
                            if 'backend' in data else 'torchvision')
            if file_backend != backend:
                raise InceptionMomentsError(
                    f'Inception moments {path} were computed with the {file_backend} backend, '
                    f'not {backend}; pass --inception_backend {file_backend} or recompute them '
                    f'with: {command}')
            for key in ('mu', 'sigma'):
                if data[key].dtype.kind != 'f':  # bool or integer moments: no one's statistics
                    raise InceptionMomentsError(f'Inception moments {path}: {key} is '
                                                f'{data[key].dtype}, not floating point; '
                                                f'recompute them with: {command}')
            out = {'mu': data['mu'].astype(np.float64),
                   'sigma': data['sigma'].astype(np.float64),
                   'count': _image_count(data['count'], path) if 'count' in data else None,
                   'feats': data['feats'] if feats and 'feats' in data else None}
    except InceptionMomentsError:
        raise  # already says what is wrong (a ValueError too, as every ConfigError)
    except NPZ_ERRORS as err:  # a damaged or hostile file
        raise InceptionMomentsError(
            f'Inception moments {path} cannot be read ({type(err).__name__}: '
            f'{" ".join(str(err).split())[:200]}); recompute them with: {command}') from None
    check_moments({k: v for k, v in out.items() if v is not None}, path, command)
    return out


def _is_psd(sigma):
    """Whether the symmetric sigma is positive semi-definite within PSD_TOL: a Cholesky
    factorisation of sigma + PSD_TOL * trace(sigma) * I exists (cheaper than its eigenvalues)."""
    diag = np.diag(sigma)
    if (diag < 0).any():
        return False
    shift = PSD_TOL * diag.sum()
    if shift == 0:
        return not sigma.any()  # a PSD matrix with a zero diagonal is zero
    shifted = sigma.copy()
    shifted.flat[::len(sigma) + 1] += shift
    try:
        np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return False
    return True


def check_moments(moments, path, command):
    """Refuse (InceptionMomentsError, one line ending with command) moments no FID can be
    computed from: mu not (D,) or sigma not (D, D), values not finite, sigma not symmetric or
    not positive semi-definite (within SYMMETRY_TOL / PSD_TOL), beyond what float32 features
    give, KID features not (K, D), not finite or beyond float32. The FID of such moments
    would be NaN or negative, and be logged as a number."""
    mu, sigma = moments['mu'], moments['sigma']
    feats = moments.get('feats')
    problem = None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        problem = f'mu has shape {mu.shape} and sigma {sigma.shape}, not (D,) and (D, D)'
    elif not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        problem = 'mu or sigma holds NaN or Inf'
    elif (np.abs(mu).max(initial=0) > FLOAT32_MAX
          or np.abs(sigma).max(initial=0) > FLOAT32_MAX ** 2):
        # Features are float32: no mean of them passes its largest value, no covariance its
        # square.
        problem = (f'mu or sigma holds values beyond what float32 features give (|mu| up to '
                   f'{FLOAT32_MAX:.3g}, |sigma| up to {FLOAT32_MAX ** 2:.3g})')
    elif np.abs(sigma - sigma.T).max(initial=0) > SYMMETRY_TOL * np.abs(sigma).max(initial=0):
        problem = (f'sigma is not symmetric (entries differ from their transposes by up to '
                   f'{np.abs(sigma - sigma.T).max():.3g})')
    elif not _is_psd(sigma):
        problem = 'sigma is not positive semi-definite, so it is no covariance'
    elif feats is not None and (feats.ndim != 2 or feats.shape[1] != len(mu)):
        problem = f'the KID features have shape {feats.shape}, not (K, {len(mu)})'
    elif feats is not None and not np.isfinite(feats).all():
        problem = 'the KID features hold NaN or Inf'
    elif feats is not None and np.abs(feats).max(initial=0) > FLOAT32_MAX:
        problem = (f'the KID features hold values beyond float32 (up to {FLOAT32_MAX:.3g}), in '
                   f'which Inception gives them')
    elif moments.get('count') is not None and moments['count'] < 2:
        problem = f"they claim to be of {moments['count']} images (a covariance needs 2)"
    if problem is not None:
        raise InceptionMomentsError(f'Inception moments {path}: {problem}; recompute them '
                                    f'with: {command}')


def check_feature_count(moments, net, dataset, data_root, backend):
    """Refuse (InceptionMomentsError) moments whose length differs from the pool features net
    gives: the FID would fail at the first test, losing the iterations before it."""
    n = getattr(net, 'module', net).pool_features  # through DataParallel
    if len(moments['mu']) != n:
        raise InceptionMomentsError(
            f"Inception moments {find_moments_file(dataset, data_root)} hold "
            f"{len(moments['mu'])} features, but the {backend} Inception network gives {n}; "
            f'recompute them with: {moments_command(dataset, data_root, backend)}')


def valid_fid(fid, sigma1, sigma2):
    """fid, once it is a distance: rounding can leave the FID of near-identical moments a
    hair below 0 (within PSD_TOL of the traces), which is 0; NaN, Inf or a negative value
    beyond that is refused (MetricsError), so it is never logged as a result."""
    scale = float(np.trace(sigma1) + np.trace(sigma2))
    if np.isfinite(fid) and fid >= -PSD_TOL * scale:
        return max(float(fid), 0.0)
    raise MetricsError(f'FID came out as {fid}, which is no distance (the moments or the '
                       f'features are not what they should be); nothing was logged for this '
                       f'test')


def per_class_moments_filename(dataset):
    """'{dataset}_inception_moments_per_class.hdf5' without a trailing '_hdf5' suffix."""
    return dataset.removesuffix('_hdf5') + '_inception_moments_per_class.hdf5'


class PerClassMomentsWriter:
    """Per-class Inception moments accumulated into an HDF5 file, with bounded memory.

    The file holds 'count' (C,) int64, 'mu' (C, D) and 'sigma' (C, D, D) float64, chunked one
    class per chunk so that a reader loads one class at a time (1,000 ImageNet classes of
    2048^2 float64 covariances are 33.5 GB), and the backend as an attribute. While writing,
    'sigma' holds the classes' sums of centred outer products; at most `open_classes` classes
    are accumulated in memory, and the least recently updated one is merged into the file when
    another is needed, so class-sorted data (ImageNet HDF5 files are) write each class once.
    """

    def __init__(self, h5, n_classes, backend, open_classes=8):
        self.h5, self.n_classes, self.backend = h5, int(n_classes), backend
        self.open_classes = open_classes
        self._open = {}  # class -> FeatureStats, in least recently updated first order

    def _create(self, dim):
        c = self.n_classes
        self.h5.attrs['backend'] = self.backend
        self.h5.create_dataset('count', data=np.zeros(c, dtype=np.int64))
        self.h5.create_dataset('mu', shape=(c, dim), dtype=np.float64, chunks=(1, dim),
                               fillvalue=0)
        self.h5.create_dataset('sigma', shape=(c, dim, dim), dtype=np.float64,
                               chunks=(1, dim, dim), fillvalue=0)

    def update(self, feats, labels):
        """Add pool features (N, D) with their class labels (N,)."""
        feats = torch.as_tensor(feats).detach()
        labels = torch.as_tensor(labels).cpu().numpy()
        if 'mu' not in self.h5:
            self._create(feats.shape[1])
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise InceptionMomentsError(f'class labels outside 0..{self.n_classes - 1}')
        for c in np.unique(labels):
            c = int(c)
            stats = self._open.pop(c, None) or FeatureStats()
            stats.update(feats[torch.as_tensor(labels == c, device=feats.device)])
            self._open[c] = stats
            if len(self._open) > self.open_classes:
                self._flush(next(iter(self._open)))

    def _flush(self, c):
        """Merge class c's in-memory sums into the file's."""
        stats = self._open.pop(c)
        n = int(self.h5['count'][c])
        if n:
            stats.merge(n, self.h5['mu'][c], self.h5['sigma'][c])
        total, mean, m2 = stats.state()
        self.h5['count'][c] = total
        self.h5['mu'][c] = mean
        self.h5['sigma'][c] = m2

    def finish(self):
        """Flush every class and turn the sums into unbiased covariances (classes with fewer
        than two images keep zeros; 'count' tells them apart)."""
        while self._open:
            self._flush(next(iter(self._open)))
        if 'mu' not in self.h5:
            raise InceptionMomentsError('no images to compute per-class moments of')
        counts = self.h5['count'][:]
        for c in np.flatnonzero(counts >= 2):
            m2 = self.h5['sigma'][c] / (counts[c] - 1)
            self.h5['sigma'][c] = (m2 + m2.T) / 2
        for c in np.flatnonzero(counts == 1):
            self.h5['sigma'][c] = 0
        return counts


class PerClassMoments:
    """Reader of a per-class moments file: moments(c) loads class c alone.

    The file's layout, types and declared sizes are checked before any data is read (the
    counts are read whole, one class's mu and sigma at each moments(c)), and every read of
    damaged data is one InceptionMomentsError.
    """

    def __init__(self, path, backend):
        import h5py
        self.path = path
        try:
            self.h5 = h5py.File(open_regular(path, 'per-class Inception moments'), 'r')
            count, mu, sigma = (hdf5_dataset(self.h5, key, path, 'recompute them with '
                                             'calculate_inception_moments.py --per_class')
                                for key in ('count', 'mu', 'sigma'))
            file_backend = self.h5.attrs.get('backend')
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise self._error(f'cannot be read ({type(err).__name__})') from None
        if not all(isinstance(x, h5py.Dataset) for x in (count, mu, sigma)):
            raise self._error('do not hold count, mu and sigma datasets')
        if count.ndim != 1 or mu.ndim != 2 or sigma.ndim != 3 or mu.shape != (
                count.shape[0], mu.shape[1]) or sigma.shape != mu.shape + mu.shape[1:]:
            raise self._error(f'have inconsistent shapes (count {count.shape}, mu {mu.shape}, '
                              f'sigma {sigma.shape})')
        if count.dtype.kind not in 'iu' or mu.dtype.kind != 'f' or sigma.dtype.kind != 'f':
            raise self._error(f'have counts of {count.dtype} and moments of {mu.dtype} and '
                              f'{sigma.dtype}, not integers and floats')
        if not isinstance(file_backend, (str, bytes)):
            raise self._error('have no backend attribute')
        file_backend = known_backend(file_backend, f'per-class Inception moments {path}',
                                     f'calculate_inception_moments.py --per_class '
                                     f'--inception_backend {backend}')
        if file_backend != backend:
            raise InceptionMomentsError(
                f'per-class Inception moments {path} were computed with the {file_backend} '
                f'backend, not {backend}; recompute them with --inception_backend {backend}')
        d = mu.shape[1]
        # The counts' int64 copy, and a class's float64 mu and sigma with check_moments' copies.
        check_declared(16 * count.shape[0], 'its class counts', path)
        check_declared(4 * declared_nbytes((d, d), 8, "one class's sigma", path),
                       "one class's moments", path)
        counts = self._read(count, slice(None)).astype(np.int64)
        if (counts < 0).any():
            raise self._error(f'have negative image counts (min {counts.min()})')
        self.counts = counts
        if not self.classes:
            raise self._error('hold no class of two or more images, so intra-FID has nothing '
                              'to compare with')

    def _error(self, problem):
        return InceptionMomentsError(f'per-class Inception moments {self.path} {problem}; '
                                     f'recompute them with calculate_inception_moments.py '
                                     f'--per_class')

    def _read(self, dataset, index):
        """dataset[index], a damaged file's read error as one line."""
        try:
            return dataset[index]
        except (OSError, ValueError, TypeError) as err:
            raise self._error(f'cannot be read ({type(err).__name__}: '
                              f'{" ".join(str(err).split())[:100]})') from None

    def check_features(self, net):
        """Refuse a file whose features are not the length net gives, or any of whose
        classes check_moments refuses, before training: each class is read and checked once,
        one at a time (for ImageNet, 1,000 reads of 32 MB and Cholesky factorisations of
        2048^2, about a minute), so a damaged class fails now rather than at a test."""
        n = getattr(net, 'module', net).pool_features
        if self.h5['mu'].shape[-1] != n:
            raise InceptionMomentsError(
                f"per-class Inception moments {self.path} hold {self.h5['mu'].shape[-1]} "
                f'features, but the Inception network gives {n}; recompute them')
        for c in self.classes:
            self.moments(c)

    @property
    def classes(self):
        """The classes with at least two images (a covariance)."""
        return [int(c) for c in np.flatnonzero(self.counts >= 2)]

    def moments(self, c):
        """(mu (D,), sigma (D, D)) of class c, read from the file now and checked as every
        moments file is (check_moments), so a damaged class gives no number."""
        mu = self._read(self.h5['mu'], c).astype(np.float64)
        sigma = self._read(self.h5['sigma'], c).astype(np.float64)
        check_moments({'mu': mu, 'sigma': sigma, 'count': int(self.counts[c])},
                      f'{self.path} (class {c})', 'calculate_inception_moments.py --per_class')
        return mu, sigma

    def sha256(self):
        """The file's sha256 (for the protocol stamp)."""
        return file_digest(self.path)['sha256']


def find_per_class_moments(dataset, data_root='data', backend='torchvision'):
    """The dataset's per-class moments (PerClassMoments), looked for as the moments file is,
    or an InceptionMomentsError naming the command that makes them."""
    name = per_class_moments_filename(dataset)
    for folder in (data_root, os.getcwd()):
        if folder is not None and os.path.isfile(os.path.join(folder, name)):
            return PerClassMoments(os.path.join(folder, name), backend)
    raise InceptionMomentsError(
        f'per-class Inception moments {name} not found in {data_root} or {os.getcwd()}; make '
        f'them with: {moments_command(dataset, data_root, backend)} --per_class')


def select_metrics(spec='IS,FID', no_fid=False, kid=False):
    """The metrics a comma-separated --metrics names, in metrics.METRICS order, with --no_fid
    removing FID and --kid adding KID; a ConfigError names any unknown one."""
    names = {n.strip() for n in spec.split(',') if n.strip()}
    if not names:
        raise ConfigError(f"--metrics {spec!r} names no metric; give some of "
                          f"{', '.join(METRICS)}")
    unknown = names - set(METRICS)
    if unknown:
        raise ConfigError(f"--metrics: unknown {', '.join(sorted(unknown))}; choose from "
                          f"{', '.join(METRICS)}")
    if no_fid:
        names.discard('FID')
    if kid:
        names.add('KID')
    return tuple(n for n in METRICS if n in names)


def check_which_best(which_best, names):
    """Refuse a --which_best that the selected metrics do not compute (IS and FID, the
    release's, are always in the records)."""
    if which_best in ('IS', 'FID'):
        return
    needed = 'PRDC' if which_best in METRICS['PRDC'] else which_best
    if needed not in names:
        raise ConfigError(f'--which_best {which_best} needs {needed} in --metrics '
                          f"(now {','.join(names)})")


# How each backend resizes its inputs to Inception's 299 x 299.
RESIZE = {'torchvision': "bilinear to 299x299, align_corners=True (the release's)",
          'tf_fid': "bilinear to 299x299, align_corners=False (pytorch-fid's)"}


def _sha256(path):
    """A file's sha256; None when there is no such file (a network given in code)."""
    return file_digest(path)['sha256'] if os.path.isfile(path) else None


def metrics_protocol(names, dataset, backend, weights_path, moments, per_class, kid_subset_size,
                     kid_subsets, prdc_k, intra_fid_per_class):
    """The part of a record's protocol stamp known before sampling: what was measured, with
    which network (and the sha256 of its weights), against which reference."""
    protocol = {'metrics': list(names), 'backend': backend,
                'weights': os.path.basename(weights_path),
                'weights_sha256': _sha256(weights_path), 'resize': RESIZE[backend]}
    if moments is not None:
        # calculate_inception_moments.py measures the training set.
        protocol['reference'] = {'dataset': dataset, 'split': 'train',
                                 'count': moments['count'],
                                 'moments_sha256': _sha256(moments['path'])}
    if 'KID' in names:
        protocol['KID'] = {'subset_size': kid_subset_size, 'subsets': kid_subsets}
    if 'PRDC' in names:
        protocol['PRDC'] = {'nearest_k': prdc_k, 'real_count': len(moments['feats'])}
    if 'intraFID' in names:
        protocol['intraFID'] = {'fakes_per_class': intra_fid_per_class,
                                'classes': len(per_class.classes),
                                'moments_sha256': per_class.sha256()}
    return protocol


def prepare_metrics(dataset, parallel=False, no_fid=False, backend='torchvision',
                    weights_path=None, device=None, data_root='data', kid=False,
                    kid_subset_size=1000, kid_subsets=100, num_images=None, metrics='IS,FID',
                    prdc_k=5, intra_fid_per_class=50, sampling=None, n_classes=None):
    """Load the network (and moments) once; return measure(sample, num_images, num_splits=10,
    prints=True, use_torch=True, sampling=None) -> {'IS_mean', 'IS_std', 'FID', ...,
    'protocol'}.

    'protocol' is the record's stamp (metrics_protocol's fields, plus num_fakes, IS_splits,
    PRDC's fake count and the sampling: truncation, z_std, seed), with `sampling` (a dict, given
    here or per call) saying how the fakes were drawn.

    `metrics` (a --metrics string) with no_fid and kid (select_metrics) says what to compute;
    the release's keys IS_mean, IS_std and FID are always there (FID is NO_FID, 9999.0, when
    not computed, and then no moments file is needed). KID adds KID_mean and KID_std, PRDC
    precision, recall, density and coverage, intraFID intraFID. KID and PRDC compare with the
    moments file's real features ('feats'); intraFID samples intra_fid_per_class fakes of each
    class through sample(label=c) and compares them with the per-class moments file. A KID
    subset or PRDC k that the real features, or num_images when given, cannot hold is refused
    here (metrics.MetricsError), so a training run stops before its first step rather than at
    its first test.
    """
    names = select_metrics(metrics, no_fid, kid)
    moments = per_class = None
    if {'FID', 'KID', 'PRDC'} & set(names):
        moments = load_inception_moments(dataset, data_root, backend,
                                         need_feats=bool({'KID', 'PRDC'} & set(names)))
    real = 0 if moments is None or 'feats' not in moments else len(moments['feats'])
    fakes = real if num_images is None else num_images
    if 'KID' in names:
        check_kid_sizes(kid_subset_size, real, fakes, kid_subsets)
    if 'PRDC' in names and not 1 <= prdc_k < min(real, fakes):
        raise ConfigError(f'--prdc_k {prdc_k} needs more samples: below both the real '
                          f'features ({real}) and the fakes ({fakes})')
    if 'intraFID' in names:
        per_class = find_per_class_moments(dataset, data_root, backend)
    net = load_inception_net(parallel, backend, weights_path, device)
    if moments is not None:
        check_feature_count(moments, net, dataset, data_root, backend)
    if per_class is not None:
        per_class.check_features(net)
        if n_classes is not None and len(per_class.counts) != n_classes:
            raise InceptionMomentsError(
                f'per-class Inception moments {per_class.path} hold {len(per_class.counts)} '
                f'classes, but the dataset has {n_classes}; recompute them with '
                f'{moments_command(dataset, data_root, backend)} --per_class')
        left_out = np.flatnonzero(per_class.counts < 2)
        if len(left_out):
            # Said once at start-up: the intraFID logged is over fewer classes than G draws.
            print(f'note: per-class moments {per_class.path} hold {len(left_out)} class(es) of '
                  f"fewer than 2 images (class {', '.join(map(str, left_out[:10]))}"
                  f"{', ...' if len(left_out) > 10 else ''}): intraFID leaves them out")
    weights_path = weights_path or default_weights_path(backend)
    stamp = metrics_protocol(names, dataset, backend, weights_path, moments, per_class,
                             kid_subset_size, kid_subsets, prdc_k, intra_fid_per_class)
    default_sampling = sampling

    def measure(sample, num_images, num_splits=10, prints=True, use_torch=True, sampling=None):
        """The selected metrics of exactly num_images samples (and intraFID's per class)."""
        if prints:
            print('Gathering activations...')
        keep = 0
        if 'KID' in names:
            keep = max(DEFAULT_KID_FEATS, kid_subset_size)
        if 'PRDC' in names:
            keep = max(keep, real)
        feats, scores = accumulate_inception_stats(
            sample, net, num_images, num_splits, keep_feats=min(keep, num_images))
        if prints:
            print('Calculating Inception Score...')
        is_mean, is_std = scores.result()
        out = {'IS_mean': is_mean, 'IS_std': is_std, 'FID': NO_FID}
        dev = _net_device(net)
        if 'FID' in names:
            if prints:
                print('Calculating means and covariances...')
            mu, sigma = feats.mean, feats.cov
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                raise MetricsError(f'the Inception features of the {num_images} samples hold '
                                   f'NaN or Inf (G gives non-finite images), so they have no '
                                   f'FID; nothing was logged for this test')
            if prints:
                print('Covariances calculated, getting FID...')
            if use_torch:
                # The eigendecompositions run where the network does.
                fid = torch_calculate_frechet_distance(
                    torch.as_tensor(mu, device=dev), torch.as_tensor(sigma, device=dev),
                    moments['mu'], moments['sigma'])
            else:
                fid = numpy_calculate_frechet_distance(
                    mu, sigma, moments['mu'], moments['sigma'])
            out['FID'] = valid_fid(float(fid), sigma, moments['sigma'])
        if 'KID' in names:
            out['KID_mean'], out['KID_std'] = calculate_kid(
                feats.feats, moments['feats'], num_subsets=kid_subsets,
                subset_size=kid_subset_size, device=dev)
        protocol = {**stamp, 'num_fakes': num_images, 'IS_splits': num_splits}
        if 'PRDC' in names:
            fakes = feats.feats[:real]
            out.update(compute_prdc(moments['feats'], fakes, prdc_k, device=dev))
            protocol['PRDC'] = {**protocol['PRDC'], 'fake_count': len(fakes)}
        if 'intraFID' in names:
            out['intraFID'] = calculate_intra_fid(
                per_class.classes, lambda c: _class_moments(sample, c), per_class.moments)[0]
        protocol.update(sampling or default_sampling or {})
        out['protocol'] = protocol
        return out

    def _class_moments(sample, c):
        """(mu, sigma) of intra_fid_per_class fakes of class c."""
        stats = FeatureStats()
        for pool, _, _ in iterate_inception_outputs(
                functools.partial(sample, label=c), net, intra_fid_per_class):
            stats.update(pool)
        return stats.mean, stats.cov

    return measure


def metrics_from_config(config, device=None, sampling=None):
    """prepare_metrics as a run's flags ask (--dataset, --no_fid, --inception_backend,
    --inception_weights, --kid and its sizes, --num_inception_images, --metrics, --prdc_k,
    --intra_fid_per_class), on device; sampling as prepare_metrics takes it."""
    return prepare_metrics(
        config['dataset'], config['parallel'], config['no_fid'],
        backend=config['inception_backend'], weights_path=config['inception_weights'] or None,
        device=device, data_root=config['data_root'], kid=config['kid'],
        kid_subset_size=config['kid_subset_size'], kid_subsets=config['kid_subsets'],
        num_images=config['num_inception_images'], metrics=config['metrics'],
        prdc_k=config['prdc_k'], intra_fid_per_class=config['intra_fid_per_class'],
        sampling=sampling, n_classes=config.get('n_classes'))


def prepare_inception_metrics(dataset, parallel, no_fid=False,
                              backend='torchvision', weights_path=None,
                              device=None, data_root='data', kid=False):
    """The release's entry point: get_inception_metrics(sample, num_inception_images,
    num_splits=10, prints=True, use_torch=True) -> (IS_mean, IS_std, FID).

    prepare_metrics gives the same numbers as a dict, with KID when kid=True.
    """
    measure = prepare_metrics(dataset, parallel, no_fid, backend, weights_path, device,
                              data_root, kid)

    def get_inception_metrics(sample, num_inception_images, num_splits=10, prints=True,
                              use_torch=True):
        m = measure(sample, num_inception_images, num_splits, prints, use_torch)
        return m['IS_mean'], m['IS_std'], m['FID']

    return get_inception_metrics


def metrics_line(itr, metrics):
    """The release's IS/FID report line, with any further metrics (KID, ...) appended (the
    protocol stamp is not a metric)."""
    extra = ''.join(f', {k} is {v:g}' for k, v in metrics.items()
                    if k not in ('IS_mean', 'IS_std', 'FID', 'protocol'))
    return (f'Itr {itr}: PYTORCH UNOFFICIAL Inception Score is {metrics["IS_mean"]:3.3f} +/- '
            f'{metrics["IS_std"]:3.3f}, PYTORCH UNOFFICIAL FID is {metrics["FID"]:5.4f}{extra}')
