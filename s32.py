"""S32: procedurally drawn 32x32 shapes in 10 classes, a dataset that needs no download.

make_s32 draws it, deterministic in its seed; datasets.S32 and datasets.load_s32 cache and
serve it like any other dataset of the table.
"""
import numpy as np

S32_CLASSES = ['circle', 'square', 'triangle', 'ring', 'hbars', 'vbars',
               'cross', 'diamond', 'checker', 'two_dots']
S32_RES = 32
S32_DEFAULT_PER_CLASS = 5000
# Supersampling factor: shapes are drawn on a finer grid and box-filtered so
# that edges are anti-aliased like a downscaled photograph.
_S32_SUPER = 2
# Images drawn per vectorised step; bounds the float temporaries to ~100 MB.
_S32_BLOCK = 1000


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
