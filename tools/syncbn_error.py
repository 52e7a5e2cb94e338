"""Cross-replica BN error: 2 Gloo ranks (float32) against one process with the full batch in
float64, for the BN layers alone and for whole generators.

    python tools/syncbn_error.py

Every case runs one training-mode forward and a backward of sum(out * w) (w fixed and random),
on 2 CPU ranks with `cross_replica=True`, each rank holding its share of the batch. The ranks'
outputs and input gradients are concatenated, their parameter gradients summed (what DDP's
all-reduce computes, before its division by the world size), and compared with the float64
reference by relative error in global norm, ||a - ref|| / ||ref|| over all tensors of a measure.
Running buffers start at 0 and are compared after one update (see `new_case`).

Layer cases feed `ccbn`, `bn` and `myBN` (ccbn with mybn=True) inputs whose channels have mean
0, 10 or 100 and std 1; their reference is the batch-norm formula in float64. A GBlock (ccbn,
activation, upsample, conv, twice) gets the same inputs. Model cases are a BigGAN G (--G_shared
--hier --G_attn 16) and a BigGANdeep G at 32px with small widths, as initialised; the reference
of GBlock and G is the same module in float64 without cross_replica, on one process. A split
such as 3+5 gives the ranks unequal batches. GBlock and G use SiLU instead of ReLU: a ReLU input
within float32 rounding of 0 can flip between the float32 and float64 runs, which moves the
gradients by about 1/sqrt(numel) of a layer (1e-3 here) whatever the BN does. The last column
is one float32 process with cross_replica on (no process group) against the same reference: the
float32 floor, max over the four measures.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ToolParser, bounded, run_cli

# isort: split
import functools
import importlib
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from files import check_fits

MEASURES = ('out', 'param_grad', 'input_grad', 'buffers')
G_FLAGS = ['--dataset', 'S32', '--G_ch', '8', '--dim_z', '8', '--G_shared', '--shared_dim', '8',
           '--hier', '--G_attn', '16', '--G_init', 'N02', '--device', 'cpu']
LAYER_DIM = 8  # ccbn's conditioning vector


def default_cases(batch=8, channels=16, size=16):
    """The table's cases: each layer x input mean, unequal splits, and the two generators."""
    even, uneven = (batch // 2, batch - batch // 2), (3, batch - 3)
    cases = [layer_case(kind, mean, even, channels, size)
             for kind in LAYERS + ('gblock',) for mean in (0.0, 10.0, 100.0)]
    cases += [layer_case(kind, 10.0, uneven, channels, size) for kind in LAYERS]
    cases += [model_case('BigGAN', even), model_case('BigGAN', uneven),
              model_case('BigGANdeep', even)]
    return cases


LAYERS = ('ccbn', 'bn', 'mybn')  # checked against the batch-norm formula


def build(case, cross_replica):
    """The case's module, with or without cross-replica statistics."""
    import layers
    import utils
    kind, channels = case['kind'], case.get('channels')
    if kind == 'G':
        config = utils.prepare_config(vars(utils.prepare_parser().parse_args(case['flags'])))
        config.update(cross_replica=cross_replica, no_optim=True, G_activation=nn.SiLU())
        return importlib.import_module(config['model']).Generator(**config)
    if kind == 'bn':
        return layers.bn(channels, cross_replica=cross_replica)
    which_bn = functools.partial(layers.ccbn, input_size=LAYER_DIM, which_linear=nn.Linear,
                                 cross_replica=cross_replica, mybn=kind == 'mybn')
    if kind == 'gblock':
        return layers.GBlock(channels, channels, functools.partial(nn.Conv2d, kernel_size=3,
                                                                   padding=1),
                             which_bn, activation=nn.SiLU(),
                             upsample=functools.partial(F.interpolate, scale_factor=2))
    return which_bn(channels)


def new_case(case, seed=1):
    """Seeded weights for the case, its running buffers zeroed, and a matching loss weight w.

    Buffers start at 0 so that after one update they hold 0.1 x the batch statistics, whose
    error float32 then keeps at full precision (from 1, var's update would be rounded away).
    """
    torch.manual_seed(seed)
    net = build(case, cross_replica=True).eval()
    with torch.no_grad():
        shape = forward(case, net, slice(None))[0].shape
    case['state'] = net.state_dict()
    for k, b in case['state'].items():
        if k.endswith(('stored_mean', 'stored_var')):
            b.zero_()
    case['w'] = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return case


def layer_case(kind, mean, split, channels=16, size=16):
    """A BN layer (or a GBlock) fed channels of the given mean and std 1."""
    g = torch.Generator().manual_seed(0)
    n = sum(split)
    return new_case({'name': f'{kind} mean {mean:g}', 'kind': kind, 'split': split,
                     'channels': channels,
                     'x': torch.randn(n, channels, size, size, generator=g) + mean,
                     'y': torch.randn(n, LAYER_DIM, generator=g)})


def model_case(model, split, flags=G_FLAGS):
    """A whole G at initialisation."""
    g = torch.Generator().manual_seed(0)
    n, flags = sum(split), flags + ['--model', model]
    G = build({'kind': 'G', 'flags': flags}, cross_replica=False)
    return new_case({'name': model + ' G', 'kind': 'G', 'flags': flags, 'split': split,
                     'z': torch.randn(n, G.dim_z, generator=g),
                     'y': torch.randint(0, G.n_classes, (n,), generator=g)})


def forward(case, net, sl, dtype=torch.float32):
    """net's output on the slice sl of the case's batch, and the inputs that take gradients."""
    if case['kind'] == 'G':
        z = case['z'][sl].to(dtype).requires_grad_()
        return net(z, net.shared(case['y'][sl])), [z]
    x = case['x'][sl].to(dtype).requires_grad_()
    y = case['y'][sl].to(dtype).requires_grad_()
    if case['kind'] == 'bn':
        return net(x), [x]
    return net(x, y), [x, y]


def run(case, net, sl=slice(None), dtype=torch.float32):
    """One training-mode forward and backward; what the measures compare."""
    net.load_state_dict(case['state'])
    net.to(dtype).train()
    # Spectral norm's power iteration runs in float32 by design: keep its vectors float32.
    for module in net.modules():
        for k, b in module._buffers.items():
            if k.startswith(('u', 'sv')):
                module._buffers[k] = b.float()
    out, inputs = forward(case, net, sl, dtype)
    (out * case['w'][sl].to(dtype)).sum().backward()
    return {'out': out.detach(), 'input_grad': [t.grad for t in inputs],
            'param_grad': {k: p.grad for k, p in net.named_parameters()},
            'buffers': {k: b.detach().clone() for k, b in net.state_dict().items()
                        if k.endswith(('stored_mean', 'stored_var'))}}


def run_case(case, rank=None):
    """The case in float32 with cross_replica on: rank's share, or the whole batch."""
    sl = slice(None)
    if rank is not None:
        start = sum(case['split'][:rank])
        sl = slice(start, start + case['split'][rank])
    return run(case, build(case, cross_replica=True), sl)


def reference(case):
    """The same forward and backward in float64 on one process."""
    if case['kind'] not in LAYERS:
        return run(case, build(case, cross_replica=False), dtype=torch.float64)
    # The batch-norm formula, independent of layers.py.
    eps, momentum = 1e-5, 0.1
    state = {k: v.double().requires_grad_('stored' not in k and 'counter' not in k)
             for k, v in case['state'].items()}
    x = case['x'].double().requires_grad_()
    y = case['y'].double().requires_grad_()
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    xhat = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    if case['kind'] == 'bn':
        inputs = [x]
        out = xhat * state['gain'].view(1, -1, 1, 1) + state['bias'].view(1, -1, 1, 1)
    else:
        inputs = [x, y]
        gain = 1 + F.linear(y, state['gain.weight'], state['gain.bias'])
        bias = F.linear(y, state['bias.weight'], state['bias.bias'])
        out = xhat * gain[:, :, None, None] + bias[:, :, None, None]
    (out * case['w'].double()).sum().backward()
    n = x.numel() // x.size(1)
    prefix = 'bn.' if case['kind'] == 'mybn' else ''
    # myBN keeps the biased variance (the release's); the others the unbiased, as F.batch_norm.
    batch_var = var if case['kind'] == 'mybn' else var * n / (n - 1)
    buffers = {prefix + 'stored_mean': momentum * mean.detach(),
               prefix + 'stored_var': momentum * batch_var.detach()}
    return {'out': out.detach(), 'input_grad': [t.grad for t in inputs],
            'param_grad': {k: t.grad for k, t in state.items() if t.requires_grad},
            'buffers': buffers}


def rel_error(a, b):
    """||a - b|| / ||b|| over every tensor of two equal-keyed dicts or lists."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        a, b = [a[k] for k in sorted(a)], [b[k] for k in sorted(a)]
    diff = sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b))
    norm = sum((y.double() ** 2).sum() for y in b)
    return (diff / norm).sqrt().item()


def errors(result, ref):
    """Relative errors of one run against the reference, per measure."""
    return {'out': rel_error([result['out']], [ref['out']]),
            **{k: rel_error(result[k], ref[k]) for k in MEASURES[1:]}}


def combine(ranks):
    """One result from the ranks': outputs and input grads concatenated, param grads summed."""
    return {'out': torch.cat([r['out'] for r in ranks]),
            'input_grad': [torch.cat(ts) for ts in zip(*(r['input_grad'] for r in ranks))],
            'param_grad': {k: sum(r['param_grad'][k] for r in ranks)
                           for k in ranks[0]['param_grad']},
            'buffers': ranks[0]['buffers']}


def _worker(rank, world, port, cases, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        results = [run_case(case, rank) for case in cases]
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def measure(cases, world=2):
    """Per case: errors of the ranks and of one float32 process against float64."""
    assert all(len(case['split']) == world for case in cases)
    from distributed import free_port
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, free_port(), cases, tmp), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(tmp, f'rank{r}.pt'), weights_only=True)
                 for r in range(world)]
    table = []
    for i, case in enumerate(cases):
        ref = reference(case)
        ranks_err = errors(combine([r[i] for r in ranks]), ref)
        single = errors(run_case(case), ref)
        table.append({'name': case['name'], 'split': '+'.join(map(str, case['split'])),
                      **ranks_err, 'single': max(single.values())})
    return table


def format_table(table):
    lines = ['| case | split | out | param grad | input grad | buffers | 1 process f32 |',
             '|---|---|---:|---:|---:|---:|---:|']
    for row in table:
        lines.append('| {} | {} | {} |'.format(row['name'], row['split'], ' | '.join(
            f'{row[k]:.1e}' for k in MEASURES + ('single',))))
    return '\n'.join(lines)


def main():
    parser = ToolParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=bounded(int, '>= 2'), default=8,
                        help='total batch of the layer cases')
    parser.add_argument('--channels', type=bounded(int, '>= 1'), default=16)
    parser.add_argument('--size', type=bounded(int, '>= 1'), default=16,
                        help='height = width of layer inputs')
    run_cli(report, parser, namespace=True)


def report(args):
    """The tool on its parsed flags."""
    # Each case's input, output and gradients in float64 and float32, in both ranks and the
    # one-process run: a generous 16 float64 copies of one batch.
    check_fits(16 * 8 * args.batch * args.channels * args.size ** 2,
               f'the layer cases of {args.batch} x {args.channels} x {args.size} x {args.size}',
               'lower --batch, --channels or --size')
    torch.set_num_threads(1)
    print(format_table(measure(default_cases(args.batch, args.channels, args.size))))


if __name__ == '__main__':
    main()
