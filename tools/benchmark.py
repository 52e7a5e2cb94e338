"""Time BigGAN training iterations for a named config and a set of modes, in one run.

    python tools/benchmark.py --config s32 --modes fp32,fp32+cl,bf16,bf16+cl,release
    python tools/benchmark.py --config i128 --batch_size 32 \
        --modes fp32,bf16,bf16+cl,compile+bf16+cl

Every mode runs the real step (`train_fns.GAN_training_function`, i.e. num_D_steps D steps with
their accumulations, one G step, the EMA update, the `.item()`s of the returned losses) on
synthetic real images, in its own subprocess (so peak memory is per mode and one mode's compile
cache cannot help another): `--warmup` untimed iterations, then `--reps` timed repetitions of
`--itrs` iterations each; the table gives medians over the repetitions.

Columns: images/s = real images consumed per second (D's batch: batch_size x num_D_steps x
num_D_accumulations per iteration); it/s; peak memory (CUDA max_memory_allocated on GPU; on CPU
the process's peak RSS, ru_maxrss, which includes the Python/torch runtime); x fp32 = images/s
relative to the float32 eager mode (`fp32`) of the same run. `--budget` caps the whole run
(tools/gpu_check.sh uses it); `--ch` shrinks the widths (its dry run on CPU).

Modes are '+'-joined switches:
  fp32      float32 eager, the default training path (foreach Adam, foreach EMA)
  bf16/fp16 --amp bf16/fp16 (torch.autocast; GradScaler for fp16)
  cl        --channels_last
  compile   --compile (torch.compile of G and D)
  release   "release-style" step, a stand-in for the release's hot loop (whose code we do not
            ship): our step with --toggle_grads, Adam with foreach=False (the per-parameter
            loop of torch<1.13 Adam the release ran on) and the release's per-tensor EMA
            (`target.copy_(target * decay + source * (1 - decay))` for each state-dict entry),
            float32, contiguous memory format.

Configs (`--config`):
  s32   32x32 S32, G_ch = D_ch = 32, batch 32, the release's CIFAR launch script otherwise
        (num_D_steps 4, no attention, N02 init, EMA)
  i128  the release's launch_BigGAN_bs256x8.sh model (ch96, attention at 64, hier, shared
        embedding, ortho init, EMA) at a per-device batch of --batch_size (default 32) and
        1 accumulation (the launch script's 8x8 accumulations just repeat the same work)
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ConfigError, ToolParser, bounded, run_cli

# isort: split
import argparse
import json
import resource
import statistics
import subprocess
import time

CONFIGS = {
    's32': ['--dataset', 'S32', '--G_ch', '32', '--D_ch', '32', '--batch_size', '32',
            '--num_D_steps', '4', '--G_lr', '2e-4', '--D_lr', '2e-4', '--G_ortho', '0.0',
            '--G_attn', '0', '--D_attn', '0', '--G_init', 'N02', '--D_init', 'N02', '--ema',
            '--use_ema', '--ema_start', '1000'],
    'i128': ['--dataset', 'I128_hdf5', '--batch_size', '32', '--num_G_accumulations', '1',
             '--num_D_accumulations', '1', '--num_D_steps', '1', '--G_lr', '1e-4', '--D_lr',
             '4e-4', '--D_B2', '0.999', '--G_B2', '0.999', '--G_attn', '64', '--D_attn', '64',
             '--G_nl', 'inplace_relu', '--D_nl', 'inplace_relu', '--SN_eps', '1e-6', '--BN_eps',
             '1e-5', '--adam_eps', '1e-6', '--G_ortho', '0.0', '--G_shared', '--G_init', 'ortho',
             '--D_init', 'ortho', '--hier', '--dim_z', '120', '--shared_dim', '128',
             '--G_eval_mode', '--G_ch', '96', '--D_ch', '96', '--ema', '--use_ema',
             '--ema_start', '20000'],
}
DEFAULT_MODES = 'release,fp32,fp32+cl,bf16,bf16+cl,fp16,fp16+cl'


def mode_flags(mode):
    parts = set(mode.split('+'))
    unknown = parts - {'fp32', 'bf16', 'fp16', 'cl', 'compile', 'release'}
    if unknown:
        raise ConfigError(f'unknown mode part(s) {sorted(unknown)} in {mode!r}: --modes takes '
                          f'fp32, bf16, fp16, cl, compile and release joined by +')
    flags = []
    if 'bf16' in parts:
        flags += ['--amp', 'bf16']
    if 'fp16' in parts:
        flags += ['--amp', 'fp16']
    if 'cl' in parts:
        flags += ['--channels_last']
    if 'compile' in parts:
        flags += ['--compile']
    return flags, 'release' in parts


def release_style(G, D, G_ema, ema):
    """Swap in the release's per-parameter Adam and per-tensor EMA (see the module docstring)."""
    import torch
    for net in (G, D):
        group = net.optim.param_groups[0]
        net.optim = torch.optim.Adam(net.parameters(), lr=group['lr'], betas=group['betas'],
                                     eps=group['eps'], weight_decay=0, foreach=False)
    if ema is not None:
        source_dict, target_dict = ema.source.state_dict(), ema.target.state_dict()

        @torch.no_grad()
        def update(itr=None):
            decay = 0.0 if itr is not None and itr < ema.start_itr else ema.decay
            for key in source_dict:
                target_dict[key].data.copy_(target_dict[key].data * decay
                                            + source_dict[key].data * (1 - decay))
        ema.update = update


def mode_config(args, mode):
    """(train.py's config for one mode of the benchmark, whether it is the release's step),
    refused in one line (ConfigError) when its model, batch or D's images would not fit."""
    import utils
    from files import check_fits
    flags, release = mode_flags(mode)
    argv = CONFIGS[args.config] + flags + ['--device', args.device]
    if args.batch_size:
        argv += ['--batch_size', str(args.batch_size)]
    if args.ch:
        argv += ['--G_ch', str(args.ch), '--D_ch', str(args.ch)]
    if args.num_D_steps:
        argv += ['--num_D_steps', str(args.num_D_steps)]
    config = utils.prepare_config(vars(utils.prepare_parser().parse_args(argv)))
    utils.check_model_fits(config, 'from the flags', ('Generator', 'Discriminator'))
    n = config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
    check_fits(4 * 3 * config['resolution'] ** 2 * n, f"D's {n} images a step",
               'lower --batch_size or --num_D_steps')
    return config, release


def child(args):
    """Time one mode; prints one JSON line."""
    import torch

    import step_helpers
    import train
    import train_fns
    import utils
    if args.threads:
        torch.set_num_threads(args.threads)
    config, release = mode_config(args, args.mode)
    device = torch.device(config['device'])
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    utils.seed_rng(0)
    model, G, D, G_ema, ema = train.build_models(config, device)
    if release:
        release_style(G, D, G_ema, ema)
    GD = model.G_D(train.wrap(G, config, 1, device), train.wrap(D, config, 1, device)) \
        if config['compile'] else model.G_D(G, D)
    G_batch = max(config['G_batch_size'], config['batch_size'])
    z_, y_ = utils.prepare_z_y(G_batch, G.dim_z, config['n_classes'], device=device)
    state = {'itr': 0}
    step = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state, config,
                                           step_helpers.Precision(config, device))
    n = config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
    res = config['resolution']
    x = torch.rand(n, 3, res, res, device=device) * 2 - 1
    y = torch.randint(0, config['n_classes'], (n,), device=device)
    if config['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    metrics = {}
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        state['itr'] += 1
        metrics = step(x, y)
    sync()
    warm_s = time.perf_counter() - t0
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.itrs):
            state['itr'] += 1
            metrics = step(x, y)
        sync()
        times.append((time.perf_counter() - t0) / args.itrs)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({'mode': args.mode, 's_per_itr': statistics.median(times), 'times': times,
                      'images': n, 'peak_MiB': peak, 'warmup_s': warm_s,
                      'device': str(device), 'threads': torch.get_num_threads(),
                      'finite': all(v == v for v in metrics.values()),
                      'G_loss': metrics.get('G_loss')}))


def fp16_supported(device):
    import torch
    if device.startswith('cuda'):
        return None
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return None


def main():
    p = ToolParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default='s32', choices=sorted(CONFIGS))
    p.add_argument('--modes', default=DEFAULT_MODES, help='comma-separated (default: %(default)s)')
    p.add_argument('--warmup', type=bounded(int, '[0, 1000]'), default=2,
                   help='untimed iterations per mode')
    p.add_argument('--reps', type=bounded(int, '[1, 1000]'), default=5,
                   help='timed repetitions per mode')
    p.add_argument('--itrs', type=bounded(int, '[1, 1000000]'), default=1,
                   help='iterations per repetition')
    p.add_argument('--batch_size', type=bounded(int, '>= 0'), default=0,
                   help='override the config\'s batch')
    p.add_argument('--num_D_steps', type=bounded(int, '>= 0'), default=0,
                   help='override the config\'s D steps')
    p.add_argument('--ch', type=bounded(int, '>= 0'), default=0,
                   help='override G_ch and D_ch (e.g. a dry run)')
    p.add_argument('--budget', type=bounded(float, '[0, 86400]'), default=0,
                   help='seconds for all modes together; a mode gets what is left (0: no limit)')
    p.add_argument('--device', default='', help='cuda, cpu, ... (default: CUDA if available)')
    p.add_argument('--threads', type=bounded(int, '>= 0'), default=0,
                   help='torch threads (default: torch\'s)')
    p.add_argument('--json', default='', help='also write the results to this file')
    p.add_argument('--mode', help=argparse.SUPPRESS)  # internal: run one mode (child process)
    run_cli(run, p, namespace=True)


def run(args):
    """The tool on its parsed flags."""
    if not args.device:
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.mode:
        return child(args)
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    for mode in modes:  # every mode's sizes, before the first one runs
        mode_config(args, mode)

    results = []
    deadline = time.monotonic() + args.budget if args.budget else None
    load = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    print(f'config {args.config} on {args.device}; {args.warmup} warm-up + {args.reps} x '
          f'{args.itrs} timed iterations per mode; load {load}', flush=True)
    for mode in modes:
        if 'fp16' in mode.split('+'):
            reason = fp16_supported(args.device)
            if reason:
                print(f'skip {mode}: fp16 autocast unsupported here ({reason})')
                continue
        cmd = [sys.executable, os.path.abspath(__file__), '--mode', mode]
        for key in ('config', 'warmup', 'reps', 'itrs', 'batch_size', 'num_D_steps', 'ch',
                    'device', 'threads'):
            cmd += ['--' + key, str(getattr(args, key))]
        left = deadline - time.monotonic() if deadline else None
        if left is not None and left < 1:
            print(f'skip {mode}: the --budget is spent')
            continue
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=left)
        except subprocess.TimeoutExpired:
            print(f'mode {mode} stopped: over the --budget of {args.budget:g} s')
            continue
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
        if proc.returncode != 0 or not lines:
            print(f'mode {mode} failed:\n{(proc.stdout + proc.stderr)[-2000:]}')
            continue
        results.append(json.loads(lines[-1]))
        r = results[-1]
        reps = ' '.join(f'{t:.3f}' for t in r['times'])
        print(f"  {mode:<18} {r['s_per_itr']:.3f} s/it (reps {reps})", flush=True)

    base = next((r for r in results if r['mode'] == 'fp32'), None)
    mem = f"peak MiB ({'CUDA alloc' if args.device.startswith('cuda') else 'RSS'})"
    print(f'\n| mode | images/s | it/s | {mem} | x fp32 |')
    print('|---|---:|---:|---:|---:|')
    for r in results:
        ips = r['images'] / r['s_per_itr']
        ratio = ips / (base['images'] / base['s_per_itr']) if base else float('nan')
        print(f"| {r['mode']} | {ips:.1f} | {1 / r['s_per_itr']:.3f} | {r['peak_MiB']:.0f} | "
              f'{ratio:.2f} |')
    print(f"load after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
