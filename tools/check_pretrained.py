"""Max pixel error of convert_pretrained.py against HF's BigGAN-deep, per size and truncation.

For each size it builds a stand-in in HF's format (tests/conftest.py's hf_standin: HF's own model
with random weights and calibrated per-truncation statistics; full width by default), writes it
as HF's files, converts it with the command line as a user would, loads the checkpoint the way
sample.py --config_from_name --G_eval_mode does, and compares images with HF's
BigGAN(z, one_hot(y), truncation) in eval mode on the same z (truncation x a truncated normal) and
classes. --float64 also reports HF's own float32 error (against its float64 output), the noise
floor of any float32 reimplementation.

Run: .venv/bin/python tools/check_pretrained.py [--sizes 128 256 512] [--channel_width 128]
     [--truncations 0.4 0.123 0.56 1.0] [--batch 2] [--float64]
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ToolParser, bounded, run_cli

# isort: split
import copy
import math
import subprocess
import tempfile
import time

import torch
import torch.nn.functional as F
from scipy.stats import truncnorm

import convert_pretrained
from conftest import HF_LAYERS, hf_standin, load_as_sample, save_hf
from files import check_fits


def main():
    parser = ToolParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[128, 256, 512],
                        choices=(128, 256, 512))
    parser.add_argument('--channel_width', type=bounded(int, '>= 1'), default=128)
    parser.add_argument('--z_dim', type=bounded(int, '>= 1'), default=128)
    parser.add_argument('--num_classes', type=bounded(int, '>= 1'), default=1000)
    parser.add_argument('--truncations', type=bounded(float, '> 0'),
                        nargs='+', default=[0.4, 0.123, 0.56, 1.0])
    parser.add_argument('--batch', type=bounded(int, '>= 1'), default=2)
    parser.add_argument('--seed', type=bounded(int, '[0, 4294967295]'), default=0)
    parser.add_argument('--threads', type=bounded(int, '>= 1'), default=1)
    parser.add_argument('--float64', action='store_true', help="also HF's float32 noise floor")
    run_cli(run, parser, namespace=True)


def check_sizes(args):
    """Refuse (one line) sizes whose models do not fit in memory, before any is built: HF's
    stand-in, its files, our converted G, and a float64 copy with --float64."""
    for size in args.sizes:
        cfg = {**convert_pretrained.HF_DEFAULTS, 'output_dim': size, 'z_dim': args.z_dim,
               'class_embed_dim': args.z_dim, 'channel_width': args.channel_width,
               'num_classes': args.num_classes, 'layers': HF_LAYERS[size]}
        shapes = convert_pretrained.hf_shapes(cfg, convert_pretrained.hf_arch(cfg)[2])
        count = sum(math.prod(shape) for shape in shapes.values())  # Python ints: no overflow
        check_fits(4 * count * (5 if args.float64 else 3),
                   f'the {size}px models of --channel_width {args.channel_width}',
                   'use a smaller --channel_width or fewer --sizes')
        # Each model's output images and its widest activations, float32 (float64 too).
        check_fits(4 * args.batch * (3 * size ** 2 + 16 * args.channel_width * size ** 2)
                   * (2 if args.float64 else 1),
                   f'a batch of {args.batch} images of {size}px', 'use a smaller --batch')


def run(args):
    """The tool on its parsed flags."""
    check_sizes(args)
    torch.set_num_threads(args.threads)
    print('size  truncation  max |ours - HF|  HF f32 vs f64  HF params   our params  convert s')
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            config, hf = hf_standin(size, args.channel_width, args.z_dim, args.num_classes,
                                    args.seed, batch=args.batch)
            folder = save_hf(config, hf, os.path.join(tmp, f'biggan-deep-{size}'))
            hf_params = sum(p.numel() for p in hf.parameters())
            for truncation in args.truncations:
                name = f'deep{size}_t{truncation:g}'
                start = time.time()
                subprocess.run([sys.executable, os.path.join(ROOT, 'convert_pretrained.py'),
                                '--hf_dir', folder, '--truncation', str(truncation),
                                '--weights_root', tmp, '--experiment_name', name],
                               check=True, stdout=subprocess.DEVNULL)
                seconds = time.time() - start
                G, _ = load_as_sample(tmp, name)
                z = torch.from_numpy(truncnorm.rvs(-2, 2, size=(args.batch, args.z_dim),
                                                   random_state=args.seed + 1)
                                     .astype('float32')) * truncation
                y = torch.arange(args.batch) * 7 % args.num_classes
                one_hot = F.one_hot(y, args.num_classes).float()
                with torch.no_grad():
                    reference = hf(z, one_hot, truncation)
                    ours = G(z, G.shared(y))
                    floor = float('nan')
                    if args.float64:
                        hf64 = copy.deepcopy(hf).double()
                        floor = (hf64(z.double(), one_hot.double(), truncation)
                                 - reference.double()).abs().max().item()
                        del hf64
                error = (ours - reference).abs().max().item()
                params = sum(p.numel() for p in G.parameters())
                print(f'{size:4d}  {truncation:10g}  {error:15.2e}  {floor:13.2e}  '
                      f'{hf_params:10d}  {params:10d}  {seconds:9.1f}', flush=True)
                del G


if __name__ == '__main__':
    main()
