"""Measures for scripts/data_efficient/compare_s32.sh: does DiffAugment (and LeCam) help a
BigGAN trained on 10% of S32?

    python tools/compare_s32.py --step prepare  <model flags> --out DIR
    python tools/compare_s32.py --step evaluate <model flags> --out DIR --runs A,B,C

prepare writes DIR/inception_tf_fid_random.pth (the tf_fid Inception with seeded random
weights: He-normal convolutions so that features keep their scale through the 94 layers) and
trains a small classifier on real S32 (DIR/classifier.pth, its held-out accuracy in
DIR/classifier.json). evaluate loads each run's G_ema and writes DIR/table.md with, per run,
FID against the moments in --data_root under that Inception, and the share of G_ema's samples
the classifier assigns to the class G was asked for. Both measures are comparable only among
runs evaluated with the same files.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import bounded

# isort: split
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import datasets
import files
import inception_utils
import utils

INCEPTION_FILE = 'inception_tf_fid_random.pth'
CLASSIFIER_FILE = 'classifier.pth'


def prepare_parser():
    """train.py's flags (for the model and the roots) plus this tool's."""
    parser = utils.prepare_parser()
    parser.add_argument('--step', choices=['prepare', 'evaluate'], required=True)
    parser.add_argument('--out', type=str, default='compare_s32',
                        help='Folder for the Inception weights, classifier and table')
    parser.add_argument('--runs', type=str, default='',
                        help='evaluate: comma-separated experiment names under --weights_root')
    parser.add_argument('--fid_images', type=bounded(int, '>= 2'), default=2000,
                        help='evaluate: G_ema samples per FID (default: %(default)s)')
    parser.add_argument('--acc_images', type=bounded(int, '>= 1'), default=10000,
                        help='evaluate: G_ema samples per classifier accuracy '
                             '(default: %(default)s)')
    parser.add_argument('--holdout', type=bounded(int, '>= 1'), default=5000,
                        help='prepare: real images kept out of the classifier\'s training '
                             '(default: %(default)s)')
    parser.add_argument('--classifier_epochs', type=bounded(int, '>= 1'), default=1,
                        help='prepare: passes over the real images (default: %(default)s)')
    return parser


def random_inception(seed):
    """The tf_fid network with seeded He-normal convolution weights; BN is the identity."""
    torch.manual_seed(seed)
    net = inception_utils.build_inception_net('tf_fid')
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
    return net


class Classifier(nn.Module):
    """Three conv stages and a linear layer: 32x32 images in [-1, 1] to class logits."""

    def __init__(self, n_classes=10, ch=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * ch, 2 * ch, 3, padding=1), nn.ReLU())
        self.linear = nn.Linear(2 * ch, n_classes)

    def forward(self, x):
        return self.linear(self.features(x).mean([2, 3]))  # (N, 2ch) -> (N, n_classes)


def s32_tensors(config):
    """The whole S32 training set as ([-1, 1] float images, labels), as the loader yields it."""
    imgs, labels = datasets.load_s32(os.path.join(config['data_root'], 'S32'))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    return x, torch.from_numpy(labels)


@torch.no_grad()
def accuracy(net, x, y, batch=500):
    net.eval()
    hits = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
               for i in range(0, len(x), batch))
    return hits / len(x)


def train_classifier(config, out):
    """Train on S32 less a seeded held-out part; save weights and held-out accuracy."""
    # A minute or more on a small CPU, with nothing else printed until it ends.
    print(f"training the S32 classifier into {out} ({config['classifier_epochs']} epoch(s); "
          f'once per folder)', flush=True)
    x, y = s32_tensors(config)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config['seed']))
    held, train = order[:config['holdout']], order[config['holdout']:]
    torch.manual_seed(config['seed'])
    net = Classifier(config['n_classes'])
    optim = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(config['classifier_epochs']):
        net.train()
        for idx in train[torch.randperm(len(train))].split(128):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
    acc = accuracy(net, x[held], y[held])
    files.atomic_save_all([(net.state_dict(), os.path.join(out, CLASSIFIER_FILE))])
    with files.atomic_open(os.path.join(out, 'classifier.json'), 'w') as f:
        json.dump({'heldout_accuracy': acc, 'heldout_images': len(held),
                   'train_images': len(train)}, f)
    print(f'classifier: {acc:.4f} accuracy on {len(held)} held-out real images')


def prepare(config):
    out = config['out']
    os.makedirs(out, exist_ok=True)
    files.atomic_save_all([(random_inception(config['seed']).state_dict(),
                            os.path.join(out, INCEPTION_FILE))])
    train_classifier(config, out)


def load_G_ema(config, name):
    """G_ema of experiment name, built from the flags, in sampling state; and its config."""
    G = utils.build_sampling_G(config)
    folder = os.path.join(config['weights_root'], name)
    G.load_state_dict(checkpoints.torch_load(os.path.join(folder, 'G_ema.pth')))
    saved = checkpoints.torch_load(os.path.join(folder, 'state_dict.pth'))
    if config['G_eval_mode']:
        G.eval()
    return G, saved


def evaluate_run(config, name, get_inception_metrics, classifier):
    """{'FID', 'accuracy', flags} of one run's G_ema, from fixed z/y draws."""
    G, saved = load_G_ema(config, name)
    z_, y_ = utils.prepare_z_y(max(config['G_batch_size'], config['batch_size']), G.dim_z,
                               config['n_classes'])

    def sample():
        return utils.sample(G, z_, y_, config)
    with utils.sampling_state(G):
        torch.manual_seed(config['seed'])
        _, _, fid = get_inception_metrics(sample, config['fid_images'], prints=False)
        torch.manual_seed(config['seed'] + 1)
        hits, seen = 0, 0
        with torch.no_grad():
            while seen < config['acc_images']:
                images, labels = sample()
                n = min(len(labels), config['acc_images'] - seen)
                hits += int((classifier(images[:n]).argmax(1) == labels[:n]).sum())
                seen += n
    run = saved['config']
    return {'run': name, 'itr': saved['itr'], 'DiffAugment': run.get('DiffAugment', ''),
            'LC': run.get('LC', 0), 'FID': fid, 'accuracy': hits / seen}


def evaluate(config):
    out = config['out']
    get_inception_metrics = inception_utils.prepare_inception_metrics(
        config['dataset'], False, backend='tf_fid',
        weights_path=os.path.join(out, INCEPTION_FILE), device='cpu',
        data_root=config['data_root'])
    classifier = Classifier(config['n_classes'])
    classifier.load_state_dict(checkpoints.torch_load(os.path.join(out, CLASSIFIER_FILE)))
    classifier.eval()
    with open(os.path.join(out, 'classifier.json')) as f:
        held = json.load(f)
    rows = [evaluate_run(config, name, get_inception_metrics, classifier)
            for name in config['runs'].split(',')]
    lines = ['| run | --DiffAugment | --LC | iterations | FID (random tf_fid) | '
             'class accuracy of G_ema samples |', '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['run']} | {r['DiffAugment'] or '-'} | {r['LC']:g} | {r['itr']} | "
                     f"{r['FID']:.2f} | {100 * r['accuracy']:.1f}% |")
    lines.append('')
    moments = inception_utils.moments_filename(config['dataset'])
    lines.append(f"FID: {config['fid_images']} G_ema samples against the moments of {moments}; "
                 f"accuracy: {config['acc_images']} samples, classifier at "
                 f"{100 * held['heldout_accuracy']:.1f}% on {held['heldout_images']} held-out "
                 f'real images.')
    table = '\n'.join(lines) + '\n'
    with files.atomic_open(os.path.join(out, 'table.md'), 'w') as f:
        f.write(table)
    with files.atomic_open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump({'runs': rows, 'classifier': held}, f, indent=1)
    print(table)


def run(config):
    config = utils.prepare_config(config)
    if config['step'] == 'prepare':
        prepare(config)
    else:
        if not config['runs']:
            raise utils.ConfigError('--step evaluate needs --runs NAME[,NAME...]')
        evaluate(config)


if __name__ == '__main__':
    utils.run_cli(run, prepare_parser())
