"""The metrics' math, in one home: IS, FID, KID, precision/recall/density/coverage.

Every function here takes features or probabilities (numpy arrays or tensors) and knows nothing
of networks, files or flags; inception_utils.py holds the networks that make the features and
re-exports the release's names from here.

- IS: the release's split Inception Score (InceptionScoreStats streams it).
- FID: the Frechet distance between two Gaussians, in float64 through a Cholesky factor and a
  symmetric eigenvalue solver (never NaN on PSD covariances); FeatureStats streams the mean and
  covariance.
- KID: the unbiased cubic-kernel MMD^2 of Binkowski et al. 2018, averaged over random subsets.
- PRDC: precision and recall (Kynkaanniemi et al. 2019's k-NN manifolds) and density and
  coverage (Naeem et al. 2020), with the distances computed block by block so that memory does
  not grow with the square of the sample count.
"""
import numpy as np
import torch

from files import check_fits
from flags import ConfigError


class MetricsError(ConfigError):
    """Inputs a metric cannot be computed from (too few samples for the asked sizes)."""


# The metrics a test can compute (--metrics), and the records' keys each one fills.
METRICS = {'IS': ('IS_mean', 'IS_std'), 'FID': ('FID',), 'KID': ('KID_mean', 'KID_std'),
           'PRDC': ('precision', 'recall', 'density', 'coverage'), 'intraFID': ('intraFID',)}
# What --which_best can pick: name -> (record key, whether higher is better).
BEST = {'IS': ('IS_mean', True), 'FID': ('FID', False), 'KID': ('KID_mean', False),
        'precision': ('precision', True), 'recall': ('recall', True),
        'density': ('density', True), 'coverage': ('coverage', True),
        'intraFID': ('intraFID', False)}


# ----------------------------------------------------------------------------
# Statistics.

def torch_cov(m, rowvar=False):
    """Covariance of m as numpy.cov(m, rowvar=rowvar) computes it (1 / (N - 1)); m is kept."""
    if m.dim() > 2:
        raise ValueError('m has more than 2 dimensions')
    if m.dim() < 2:
        m = m.view(1, -1)
    if not rowvar and m.size(0) != 1:
        m = m.t()
    # The release centred m in place, changing the caller's tensor; this centres a copy.
    m = m - torch.mean(m, dim=1, keepdim=True)
    return (m @ m.t()).squeeze() / (m.size(1) - 1)


def as_float64(x):
    """Any array-like or tensor to a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


class FeatureStats:
    """Streaming float64 mean/covariance, plus an optional sample of rows.

    Batches are merged with Chan et al.'s pairwise update, which keeps the
    covariance accurate even when the mean is large against the spread.
    The sums live on the device of the first batch (a GPU does the D x D
    products far faster). `keep` rows are reservoir-sampled (for KID) so
    memory stays bounded.
    """

    def __init__(self, keep=0, seed=0):
        self.n = 0
        self._mean = None
        self._m2 = None
        self.keep = int(keep)
        self._rng = np.random.default_rng(seed)
        self._kept = None

    def update(self, feats):
        """Add a batch of rows (N, D)."""
        x = torch.as_tensor(feats).detach()
        if x.ndim != 2:
            raise ValueError('FeatureStats.update expects (N, D) features')
        nb = x.shape[0]
        if nb == 0:
            return
        if self._mean is not None:
            x = x.to(self._mean.device)
        x = x.to(torch.float64)
        self._keep_rows(x)
        mb = x.mean(0)
        xc = x - mb
        self.merge(nb, mb, xc.T @ xc)

    def _keep_rows(self, x):
        """Reservoir sampling (Algorithm R) of up to `keep` rows."""
        if self.keep <= 0:
            return
        x = x.cpu().numpy()
        if self._kept is None:
            self._kept = np.empty((self.keep, x.shape[1]), dtype=np.float32)
        t = self.n + np.arange(x.shape[0])
        fill = t < self.keep
        self._kept[t[fill]] = x[fill]
        rest = ~fill
        if rest.any():
            # Row t takes a random slot j < keep with probability keep/(t+1).
            j = self._rng.integers(0, t[rest] + 1)
            for row, slot in zip(x[rest][j < self.keep], j[j < self.keep]):
                self._kept[slot] = row

    def merge(self, n, mean, m2):
        """Add the rows another accumulator saw, given as its (n, mean, m2) (Chan's update)."""
        if n == 0:
            return
        mean = torch.as_tensor(mean, dtype=torch.float64)
        m2 = torch.as_tensor(m2, dtype=torch.float64)
        if self.n == 0:
            self._mean, self._m2 = mean.clone(), m2.clone()
        else:
            mean, m2 = mean.to(self._mean), m2.to(self._m2)
            total = self.n + n
            delta = mean - self._mean
            self._m2 += m2 + torch.outer(delta, delta) * (self.n * n / total)
            self._mean += delta * (n / total)
        self.n += n

    def state(self):
        """(n, mean (D,), m2 (D, D)): the sums merge() takes, as float64 numpy arrays."""
        return self.n, self._mean.cpu().numpy(), self._m2.cpu().numpy()

    @property
    def mean(self):
        """Mean of all rows seen, (D,) float64."""
        if self.n == 0:
            raise ValueError('FeatureStats has seen no rows')
        return self._mean.cpu().numpy().copy()

    @property
    def cov(self):
        """Unbiased covariance of all rows seen (as np.cov), (D, D) float64."""
        if self.n < 2:
            raise ValueError('FeatureStats needs at least two rows')
        cov = (self._m2 / (self.n - 1)).cpu().numpy()
        return (cov + cov.T) / 2

    @property
    def feats(self):
        """The reservoir-sampled rows, (min(n, keep), D) float32."""
        if self._kept is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self._kept[:min(self.n, self.keep)].copy()


class InceptionScoreStats:
    """Streaming Inception Score over exactly `num_images` probability rows.

    As the release, the first `num_splits * (num_images // num_splits)`
    rows are cut into contiguous splits; each split scores
    exp(mean_i KL(p(y|x_i) || p(y))), using
    mean KL = mean_i sum p log p - sum pbar log pbar.
    """

    def __init__(self, num_images, num_splits=10):
        if num_images < num_splits or num_splits < 1:
            raise ValueError(f'Need at least num_splits={num_splits} '
                             f'images, got {num_images}')
        self.num_splits = num_splits
        self.split_size = num_images // num_splits
        self.seen = 0
        self._plogp = np.zeros(num_splits)
        self._count = np.zeros(num_splits)
        self._psum = None

    def update(self, probs):
        """Add a batch of softmax probabilities (N, C)."""
        p = as_float64(probs)
        if self._psum is None:
            self._psum = np.zeros((self.num_splits, p.shape[1]))
        split = (self.seen + np.arange(p.shape[0])) // self.split_size
        self.seen += p.shape[0]
        # 0 * log 0 is taken as 0, where the release would give NaN.
        plogp = (p * np.log(np.where(p > 0, p, 1.0))).sum(1)
        for s in np.unique(split[split < self.num_splits]):
            rows = split == s
            self._plogp[s] += plogp[rows].sum()
            self._psum[s] += p[rows].sum(0)
            self._count[s] += rows.sum()

    def result(self):
        """(mean, std) of the per-split scores."""
        scores = []
        for s in range(self.num_splits):
            if self._count[s] == 0:
                continue
            pbar = self._psum[s] / self._count[s]
            entropy_term = (pbar * np.log(np.where(pbar > 0, pbar, 1.0))).sum()
            kl = self._plogp[s] / self._count[s] - entropy_term
            scores.append(np.exp(kl))
        if not scores:
            raise ValueError('InceptionScoreStats has seen no images')
        return float(np.mean(scores)), float(np.std(scores))


def calculate_inception_score(pred, num_splits=10):
    """IS (mean, std over splits) of softmax predictions (N, C)."""
    stats = InceptionScoreStats(len(pred), num_splits)
    stats.update(pred)
    return stats.result()


# ----------------------------------------------------------------------------
# Frechet distance and KID.

def _sqrt_psd_numpy(a):
    """Symmetric square root of a PSD matrix via eigh (negatives clamped)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product_numpy(sigma1, sigma2):
    """Tr sqrt(sigma1 sigma2) for symmetric PSD sigma1, sigma2 (float64).

    With any factor F of sigma1 = F F^T, the eigenvalues of sigma1 sigma2
    are those of the symmetric PSD matrix F^T sigma2 F, so a symmetric
    eigenvalue solver suffices: no NaN, no complex parts. Cholesky gives F
    cheaply; a singular sigma1 falls back to its symmetric square root.
    """
    try:
        f = np.linalg.cholesky(sigma1)
    except np.linalg.LinAlgError:
        f = _sqrt_psd_numpy(sigma1)
    m = f.T @ sigma2 @ f
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return np.sqrt(np.clip(ev, 0, None)).sum()


def numpy_calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

    Never NaN on PSD inputs (see _trace_sqrt_product_numpy). `eps` is kept
    for the release's signature; no regularising offset is needed.
    """
    del eps
    mu1, mu2 = as_float64(mu1).ravel(), as_float64(mu2).ravel()
    sigma1, sigma2 = as_float64(sigma1), as_float64(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError('Means and covariances must have matching shapes')
    # Finite moments of 1e200 overflow to inf here, silently: the callers refuse a FID that
    # is no distance in one line (inception_utils.valid_fid), and numpy's warning would be two
    # more lines before it.
    with np.errstate(over='ignore', invalid='ignore'):
        sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
        diff = mu1 - mu2
        return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                     - 2 * _trace_sqrt_product_numpy(sigma1, sigma2))


def _sqrt_psd_torch(a):
    """Torch twin of _sqrt_psd_numpy."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _trace_sqrt_product_torch(sigma1, sigma2):
    """Torch twin of _trace_sqrt_product_numpy."""
    f, info = torch.linalg.cholesky_ex(sigma1)
    if info.item() != 0:
        f = _sqrt_psd_torch(sigma1)
    m = f.T @ sigma2 @ f
    ev = torch.linalg.eigvalsh((m + m.T) / 2)
    return ev.clamp(min=0).sqrt().sum()


def torch_calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Torch twin of numpy_calculate_frechet_distance; a 0-d float64 tensor.

    Runs on the device of `sigma1` when it is a tensor (CPU otherwise).
    """
    del eps
    device = sigma1.device if isinstance(sigma1, torch.Tensor) else 'cpu'

    def as64(x):
        return torch.as_tensor(x).to(device=device, dtype=torch.float64)

    mu1, mu2 = as64(mu1).flatten(), as64(mu2).flatten()
    sigma1, sigma2 = as64(sigma1), as64(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError('Means and covariances must have matching shapes')
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    diff = mu1 - mu2
    return (diff @ diff + torch.trace(sigma1) + torch.trace(sigma2)
            - 2 * _trace_sqrt_product_torch(sigma1, sigma2))


def calculate_intra_fid(classes, fake_moments, real_moments):
    """intra-FID: the mean over classes of the FID between each class's fakes and that class's
    reference statistics. fake_moments(c) and real_moments(c) return (mu, sigma) of class c;
    they are called one class at a time, so only one class's covariances are held at once.
    Returns (intra-FID, {class: FID}).
    """
    per_class = {}
    for c in classes:
        mu1, sigma1 = fake_moments(c)
        mu2, sigma2 = real_moments(c)
        per_class[c] = numpy_calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    if not per_class:
        raise MetricsError('intra-FID needs at least one class')
    return float(np.mean(list(per_class.values()))), per_class


def _poly_kernel(x, y):
    """KID's cubic polynomial kernel k(x, y) = (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def check_kid_sizes(subset_size, n1, n2, num_subsets=1):
    """Refuse a KID subset larger than either sample count, or smaller than two rows, and a
    count of subsets whose scores would not fit in memory: checked before any Inception pass.

    Subsets of a few rows give the noisy (even negative) KIDs reported from tiny sets, so a
    subset never silently shrinks to fit.
    """
    check_fits(8 * num_subsets, f'{num_subsets} KID subsets\' scores', 'lower --kid_subsets')
    if subset_size < 2:
        raise MetricsError(f'KID subset size {subset_size} is below 2; raise --kid_subset_size')
    if subset_size > min(n1, n2):
        raise MetricsError(
            f'KID subset size {subset_size} is larger than the samples ({n1} and {n2} rows); '
            f'lower --kid_subset_size or use more samples')


def calculate_kid(feats1, feats2, num_subsets=100, subset_size=1000, seed=0,
                  device=None):
    """Kernel Inception Distance: (mean, std) of unbiased MMD^2 over subsets.

    Each subset draws subset_size rows without replacement from each set (MetricsError when
    either set has fewer); MMD^2 = mean off-diagonal k(x, x') + mean off-diagonal k(y, y')
    - 2 mean k(x, y). Computed in float64 on `device` (CPU by default): 100 subsets of 1000
    2048-d rows are ~1 TFLOP, which a GPU does in a blink.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    x_all = torch.as_tensor(as_float64(feats1), device=device)
    y_all = torch.as_tensor(as_float64(feats2), device=device)
    m = subset_size
    check_kid_sizes(m, len(x_all), len(y_all), num_subsets)
    # Subsets come from a seeded numpy generator so that they do not depend
    # on the device.
    rng = np.random.default_rng(seed)
    scores = np.empty(num_subsets)
    off = m * (m - 1)
    for i in range(num_subsets):
        x = x_all[torch.as_tensor(rng.choice(len(x_all), m, replace=False),
                                  device=device)]
        y = y_all[torch.as_tensor(rng.choice(len(y_all), m, replace=False),
                                  device=device)]
        kxx, kyy = _poly_kernel(x, x), _poly_kernel(y, y)
        kxy = _poly_kernel(x, y)
        score = ((kxx.sum() - kxx.trace()) / off
                 + (kyy.sum() - kyy.trace()) / off - 2 * kxy.mean())
        scores[i] = score.item()
    # Float32 features of extreme size (a damaged statistics file) give scores whose spread
    # overflows float64: no KID to log, as valid_fid refuses a FID that is no distance.
    with np.errstate(over='ignore', invalid='ignore'):
        mean, std = float(scores.mean()), float(scores.std())
    if not (np.isfinite(mean) and np.isfinite(std)):
        raise MetricsError(f'KID came out as {mean:.3g} +/- {std:.3g}, which is no result (the '
                           f'features are not what Inception gives); nothing was logged for '
                           f'this test')
    return mean, std


# ----------------------------------------------------------------------------
# Precision, recall, density and coverage.

# Rows (and columns) of one distance block: a 2048 x 2048 float64 block is 32 MiB.
PRDC_BLOCK = 2048


def _as_features(x, what, device):
    """(N, D) features as a tensor on device, in their own float dtype (float32 stays float32,
    anything else becomes float64), without copying when they already are."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise MetricsError(f'{what} must be (N, D) features, got shape {tuple(t.shape)}')
    if t.dtype != torch.float32:
        t = t.to(torch.float64)
    return t.to(device)


def _sq_norms(x, block):
    """Squared row norms in float64, upcasting one block of rows at a time."""
    return torch.cat([x[i:i + block].double().square().sum(1)
                      for i in range(0, len(x), block)])


def _distance_blocks(x, y, x_norms, y_norms, block, out_dtype, same):
    """Yield (i, j, d) for every block of the Euclidean distances between rows of x and y.

    d is x[i:i+block] against y[j:j+block], computed as the prdc package's sklearn does:
    ||x||^2 - 2 x.y + ||y||^2 in float64, rounded to out_dtype, clamped at 0, then the square
    root; with same (x is y) the diagonal is exactly 0.
    """
    for i in range(0, len(x), block):
        xb = x[i:i + block].double()
        for j in range(0, len(y), block):
            d2 = -2 * (xb @ y[j:j + block].double().T)
            d2 += x_norms[i:i + block, None]
            d2 += y_norms[None, j:j + block]
            d2 = d2.to(out_dtype).clamp_(min=0)
            if same and i == j:
                d2.fill_diagonal_(0)
            yield i, j, d2.sqrt_()


def _kth_neighbour_radii(x, norms, nearest_k, block, out_dtype):
    """Distance of each row to its nearest_k-th nearest neighbour (itself counting as the
    0th), keeping only the nearest_k + 1 smallest distances per row between blocks."""
    radii = torch.empty(len(x), dtype=out_dtype, device=x.device)
    smallest = None
    for i, j, d in _distance_blocks(x, x, norms, norms, block, out_dtype, same=True):
        cand = d if j == 0 else torch.cat([smallest, d], 1)
        smallest = torch.topk(cand, min(nearest_k + 1, cand.shape[1]), dim=1,
                              largest=False).values
        if j + block >= len(x):
            radii[i:i + block] = smallest.max(1).values
    return radii


def check_prdc_k(nearest_k, n_real, n_fake):
    """Refuse a nearest_k below 1 or not below both sample counts (a k-NN ball needs k others)."""
    if nearest_k < 1 or nearest_k >= min(n_real, n_fake):
        raise MetricsError(f'PRDC nearest_k must be >= 1 and below both sample counts '
                           f'({n_real} real, {n_fake} fake), got {nearest_k}')


def compute_prdc(real_features, fake_features, nearest_k, block_size=PRDC_BLOCK, device=None):
    """Precision, recall, density and coverage of fake features against real ones.

    A sample's k-NN ball has as radius the distance to its nearest_k-th nearest neighbour in its
    own set. Precision: the fraction of fakes inside some real ball; recall: the fraction of
    reals inside some fake ball (Kynkaanniemi et al. 2019); density: the number of real balls
    holding a fake, over nearest_k, averaged over fakes; coverage: the fraction of real balls
    holding at least one fake (Naeem et al. 2020). "Inside" is strictly closer than the radius,
    as in the prdc package, whose numbers these are: each set of distances (real-real,
    fake-fake, real-fake) is computed in float64 as sklearn does, then kept in float32 when
    both of its sides are float32 and in float64 otherwise.

    Nothing N x N is ever built: distances come in block_size x block_size blocks (32 MiB each
    at the default 2048), so the memory on top of the features is a few blocks, whatever N.
    Runs on `device` (default: the real features' device when they are a tensor, else CPU).
    Returns a dict of floats {'precision', 'recall', 'density', 'coverage'}.
    """
    if device is None:
        device = (real_features.device if isinstance(real_features, torch.Tensor)
                  else torch.device('cpu'))
    real = _as_features(real_features, 'real features', device)
    fake = _as_features(fake_features, 'fake features', device)
    if real.shape[1] != fake.shape[1]:
        raise MetricsError(f'real features have {real.shape[1]} dimensions, '
                           f'fake ones {fake.shape[1]}')
    nearest_k = int(nearest_k)
    check_prdc_k(nearest_k, len(real), len(fake))
    block = int(block_size)
    real_norms, fake_norms = _sq_norms(real, block), _sq_norms(fake, block)
    real_radii = _kth_neighbour_radii(real, real_norms, nearest_k, block, real.dtype)
    fake_radii = _kth_neighbour_radii(fake, fake_norms, nearest_k, block, fake.dtype)
    out_dtype = (torch.float32 if real.dtype == fake.dtype == torch.float32
                 else torch.float64)

    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)
    balls_per_fake = torch.zeros(len(fake), dtype=torch.int64, device=device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    nearest_fake = torch.full((len(real),), float('inf'), dtype=out_dtype, device=device)
    for i, j, d in _distance_blocks(real, fake, real_norms, fake_norms, block, out_dtype,
                                    same=False):
        rows, cols = slice(i, i + block), slice(j, j + block)
        inside = d < real_radii[rows, None]
        fake_in_real[cols] |= inside.any(0)
        balls_per_fake[cols] += inside.sum(0)
        real_in_fake[rows] |= (d < fake_radii[None, cols]).any(1)
        nearest_fake[rows] = torch.minimum(nearest_fake[rows], d.min(1).values)
    n_fake, n_real = len(fake), len(real)
    return {
        'precision': fake_in_real.sum().item() / n_fake,
        'recall': real_in_fake.sum().item() / n_real,
        'density': (1.0 / nearest_k) * (balls_per_fake.sum().item() / n_fake),
        'coverage': (nearest_fake < real_radii).sum().item() / n_real,
    }
