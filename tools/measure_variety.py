"""Do a run's samples vary as S32 does? Per class: how often a classifier trained on real S32
recognises the class G was asked for, and the spread of the samples (pixel std, the shape's
centroid and area) as a ratio to the same count of real S32 images.

    python tools/measure_variety.py --config_from_name --experiment_name s32_demo --use_ema \
        --weights_root weights --data_root data --out variety

The samples are drawn by sample.py's own --sample_npz path with the flags given (the README's
sample command: G_ema, z with std 1, no truncation; --batch_size and --G_eval_mode as given),
--images_per_class of each class taken in the order drawn. The classifier (compare_s32's) is
trained once on data_root's S32 training set, seeded, and kept in --out with its held-out
accuracy; a classifier under 98% there makes the measure untrustworthy and is refused. The real
reference is make_s32 with --real_seed, a draw the classifier and G never saw. --out gets
variety.md (the table), variety.json and sheet.png (10 samples per class beside 10 real ones).

Foreground: the background is estimated from the image itself, a plane per channel fitted to
the one-pixel border (S32's shapes never reach it, its backgrounds are linear ramps); a pixel
is foreground where a channel differs from that plane by more than FG_THRESHOLD and by more
than half the most distinct pixel's difference. Area is the count of foreground pixels, the
centroid their mean position. Real and fake images go through
the same function.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import StopRun, bounded

# isort: split
import json
import math

import numpy as np
import torch
from PIL import Image

import checkpoints
import files
import sample as sample_py
import utils
from s32 import S32_CLASSES, make_s32
from tools import compare_s32

# S32's foreground is at least 0.32 brighter than its background in some channel (value 0.7
# and up against 0.3 plus a ramp of 0.08): a floor that G's noise on a flat image stays under.
FG_THRESHOLD = 0.2 * 255
MIN_CLASSIFIER_ACCURACY = 0.98
MEASURES = ['pixel_std', 'centroid_x_std', 'centroid_y_std', 'area_std']
# The issue's targets: share recognised, and each spread as a ratio to real S32's.
TARGETS = {'recognised': 0.95, 'pixel_std': 0.85, 'centroid_x_std': 0.8,
           'centroid_y_std': 0.8, 'area_std': 0.8}


def prepare_parser():
    """sample.py's flags (how the samples are drawn) plus this tool's."""
    parser = utils.add_sample_parser(utils.prepare_parser())
    parser.add_argument('--out', type=str, default='variety',
                        help='Folder for the classifier, the table, the json and the sheet')
    parser.add_argument('--images_per_class', type=bounded(int, '>= 2'), default=1000,
                        help='Samples and real images per class (default: %(default)s)')
    parser.add_argument('--real_seed', type=bounded(int, '[0, 4294967295]'), default=1,
                        help='make_s32 seed of the real reference images; the training set '
                             'is seed 0 (default: %(default)s)')
    parser.add_argument('--holdout', type=bounded(int, '>= 1'), default=5000,
                        help='Real training images kept out of the classifier\'s training '
                             '(default: %(default)s)')
    parser.add_argument('--classifier_epochs', type=bounded(int, '>= 1'), default=1,
                        help='Classifier passes over the real images (default: %(default)s)')
    return parser


def to_nhwc(images):
    """uint8 N x H x W x 3 from N x 3 x H x W or N x H x W x 3."""
    images = np.asarray(images)
    return images.transpose(0, 2, 3, 1) if images.shape[1] == 3 else images


def foreground(images):
    """Boolean N x H x W: pixels that differ from the image's own background estimate."""
    x = to_nhwc(images).astype(np.float64)
    n, h, w, c = x.shape
    yy, xx = np.mgrid[0:h, 0:w]
    border = np.zeros((h, w), bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    # Least squares plane a + b*x + c*y per image and channel, on the border pixels.
    design = np.stack([np.ones(h * w), xx.ravel(), yy.ravel()], 1)  # (H*W, 3)
    coef = np.linalg.pinv(design[border.ravel()]) @ x[:, border]  # (N, 3, C)
    background = (design @ coef).reshape(n, h, w, c)
    diff = np.abs(x - background).max(-1)
    # Half way to the image's most distinct pixel: an anti-aliased edge pixel counts when the
    # shape covers more than half of it, so the area is the shape's, not its outline's.
    peak = diff.max((1, 2), keepdims=True)
    return diff > np.maximum(FG_THRESHOLD, 0.5 * peak)


def spread(images):
    """{'pixel_std', 'centroid_x_std', 'centroid_y_std', 'area_std', 'area_mean', 'empty'}
    of one class's images. pixel_std: the std over images of each pixel and channel, averaged
    over them (0 for copies of one image); images without foreground are left out of the
    centroid's std and counted in 'empty'."""
    x = to_nhwc(images).astype(np.float64)
    mask = foreground(x)
    area = mask.sum((1, 2)).astype(np.float64)
    h, w = mask.shape[1:]
    has = area > 0
    cx = (mask * np.arange(w)[None, None, :]).sum((1, 2))[has] / area[has]
    cy = (mask * np.arange(h)[None, :, None]).sum((1, 2))[has] / area[has]
    nan = float('nan')
    return {'pixel_std': float(x.std(0).mean()),
            'centroid_x_std': float(cx.std()) if len(cx) else nan,
            'centroid_y_std': float(cy.std()) if len(cy) else nan,
            'area_std': float(area.std()), 'area_mean': float(area.mean()),
            'empty': int((~has).sum())}


@torch.no_grad()
def recognised(classifier, images, label, batch=500):
    """Share of images (uint8) the classifier assigns to label."""
    x = torch.from_numpy(np.ascontiguousarray(to_nhwc(images))).permute(0, 3, 1, 2)
    x = x.float().div(255).sub(0.5).div(0.5)  # as the loader yields images: [-1, 1]
    hits = sum(int((classifier(x[i:i + batch]).argmax(1) == label).sum())
               for i in range(0, len(x), batch))
    return hits / len(x)


def compare(fake, real, classifier=None):
    """Per class, fake against real: {'class', 'recognised', 'real_recognised', each measure's
    ratio and both absolute values}. fake and real are lists of per-class uint8 images."""
    rows = []
    for label, (f, r) in enumerate(zip(fake, real)):
        fs, rs = spread(f), spread(r)
        row = {'class': S32_CLASSES[label] if len(fake) == len(S32_CLASSES) else str(label)}
        if classifier is not None:
            row['recognised'] = recognised(classifier, f, label)
            row['real_recognised'] = recognised(classifier, r, label)
        for m in MEASURES:
            row[m] = fs[m] / rs[m]
            row[f'{m}_fake'], row[f'{m}_real'] = fs[m], rs[m]
        row['empty'] = fs['empty']
        rows.append(row)
    return rows


def by_class(images, labels, n_classes, per_class):
    """The first per_class images of each class, in the order given."""
    out = []
    for label in range(n_classes):
        idx = np.flatnonzero(labels == label)[:per_class]
        if len(idx) < per_class:
            raise StopRun(f'only {len(idx)} samples of class {label} in the draw, '
                                f'{per_class} asked for; lower --images_per_class')
        out.append(images[idx])
    return out


def draw_samples(config, num):
    """num samples (uint8 N x 3 x H x W, labels) by sample.py's --sample_npz, into --out."""
    samples_root = os.path.join(config['out'], 'samples')
    only_npz = {k: False for k in config if k.startswith('sample_') and config[k] is True}
    sample_py.run({**config, **only_npz, 'sample_npz': True, 'sample_num_npz': num,
                   'sample_trunc_curves': '', 'samples_root': samples_root})
    path = os.path.join(samples_root, config['experiment_name'], 'samples.npz')
    with np.load(path) as f:
        return f['x'], f['y']


def load_classifier(config):
    """The classifier in --out, trained there first when missing; refused under 98%."""
    out = config['out']
    weights = os.path.join(out, compare_s32.CLASSIFIER_FILE)
    if not os.path.exists(weights):
        # Seed 0, whatever the run's seed: one classifier for every run measured into out.
        compare_s32.train_classifier({**config, 'seed': 0, 'n_classes': len(S32_CLASSES)}, out)
    with open(os.path.join(out, 'classifier.json')) as f:
        held = json.load(f)
    if held['heldout_accuracy'] < MIN_CLASSIFIER_ACCURACY:
        raise StopRun(
            f"the classifier in {out} recognises {100 * held['heldout_accuracy']:.1f}% of "
            f'held-out real S32, under {100 * MIN_CLASSIFIER_ACCURACY:.0f}%: the measure is not '
            f'trustworthy; delete {weights} and train it with more --classifier_epochs')
    net = compare_s32.Classifier(len(S32_CLASSES))
    net.load_state_dict(checkpoints.torch_load(weights))
    return net.eval(), held


def table(rows, held, config, itr):
    """The markdown table: one row per class, the minimum over classes last."""
    head = ('| class | recognised (real) | pixel std | centroid x std | centroid y std | '
            'area std |')
    lines = [head, '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['class']} | {100 * r['recognised']:.1f}% "
                     f"({100 * r['real_recognised']:.1f}%) | "
                     + ' | '.join(f'{r[m]:.2f}' for m in MEASURES) + ' |')
    lines.append(f"| **min** | **{100 * min(r['recognised'] for r in rows):.1f}%** | "
                 + ' | '.join(f'**{min(r[m] for r in rows):.2f}**' for m in MEASURES) + ' |')
    n = config['images_per_class']
    lines += ['', f"{config['experiment_name']} at itr {itr}: {n} samples per class against "
              f"{n} real S32 images per class (seed {config['real_seed']}); spreads are "
              f"ratios to real's. Classifier: {100 * held['heldout_accuracy']:.1f}% on "
              f"{held['heldout_images']} held-out real images. Targets met: "
              f"{'yes' if targets_met(rows) else 'no'}."]
    return '\n'.join(lines) + '\n'


def targets_met(rows):
    return all(r[k] >= t for r in rows for k, t in TARGETS.items())


def sheet(fake, real, path, n=10):
    """n samples per class (rows) beside n real images, 4 pixels apart, as a PNG."""
    def grid(per_class):
        return np.concatenate([np.concatenate(list(to_nhwc(c)[:n]), 1) for c in per_class], 0)
    left, right = grid(fake), grid(real)
    gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
    with files.atomic_open(path) as f:
        Image.fromarray(np.concatenate([left, gap, right], 1)).save(f, format='PNG')


def run(config):
    # sample.py gets the flags as given: prepared, a table's resolution and class count would
    # read as model flags the checkpoint overrides.
    given, config = dict(config), utils.prepare_config(config)
    per_class, n_classes = config['images_per_class'], len(S32_CLASSES)
    if per_class < 2:
        raise utils.ConfigError(f'--images_per_class must be at least 2, got {per_class}')
    # The draw (1.25 x) and the real images as uint8, and the measures' float copies.
    files.check_fits(12 * per_class * n_classes * 3 * 32 * 32,
                     f'--images_per_class {per_class} images', 'use fewer --images_per_class')
    os.makedirs(config['out'], exist_ok=True)
    classifier, held = load_classifier(config)
    # Classes are drawn uniformly: 25% more than needed leaves every class enough.
    x, y = draw_samples(given, math.ceil(1.25 * per_class * n_classes))
    fake = by_class(x, y, n_classes, per_class)
    imgs, labels = make_s32(per_class, config['real_seed'])
    real = by_class(imgs, labels, n_classes, per_class)
    rows = compare(fake, real, classifier)
    state = checkpoints.torch_load(os.path.join(config['weights_root'],
                                                utils.experiment_name(config), 'state_dict.pth'))
    text = table(rows, held, config, int(state['itr']))
    with files.atomic_open(os.path.join(config['out'], 'variety.md'), 'w') as f:
        f.write(text)
    with files.atomic_open(os.path.join(config['out'], 'variety.json'), 'w') as f:
        json.dump({'experiment_name': config['experiment_name'], 'itr': int(state['itr']),
                   'classifier': held, 'targets': TARGETS, 'targets_met': targets_met(rows),
                   'classes': rows}, f, indent=1)
    sheet(fake, real, os.path.join(config['out'], 'sheet.png'))
    print(text)


def main(argv=None):
    utils.run_cli(run, prepare_parser(), argv)


if __name__ == '__main__':
    main()
