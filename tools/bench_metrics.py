"""Benchmark PRDC: metrics.compute_prdc against the prdc package, time and peak memory.

At --n (10,000) real and fake 2,048-d float32 features both run, side by side, on the same
features, and their four numbers are compared; at --n_large (50,000) ours runs alone and the
prdc package's need is computed (it does not fit in 24 GiB). Each run is a fresh child
process: its peak memory is the rise of the resident set's high-water mark (VmHWM, reset
through /proc/self/clear_refs once the features exist) above the resident size with the
features in memory, i.e. what the computation itself adds. The load average at the start and
end of each run is printed with it (the machine may be shared).

Run: .venv/bin/python tools/bench_metrics.py [--n 10000] [--n_large 50000] [--dim 2048]
     [--k 5] [--device cpu]
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
import subprocess
import time

from files import check_fits


def prdc_package_need(n_real, n_fake, itemsize=4):
    """Bytes the prdc package holds at its peak for float32 features: a nearest-neighbour
    pass keeps its n x n distances (itemsize each) and argpartition's n x n int64 indices at
    once, while the other set's radii and nothing larger live; the real-fake pass holds
    n_real x n_fake distances and a boolean mask of them. A lower bound: sklearn's per-thread
    chunks come on top."""
    nn_pass = max(n_real, n_fake) ** 2 * (itemsize + 8)
    cross = n_real * n_fake * (itemsize + 1)
    return max(nn_pass, cross)


def overlapping_features(n, dim, latent=16, seed=0):
    """Real and fake features that share a manifold, so that all four numbers lie strictly
    between 0 and 1: Inception features of a trained G sit on a low-dimensional set near the
    real one, while independent 2,048-d Gaussians are all far apart (P, D, C 0 and R 1). Both
    sets are a fixed linear map of `latent`-d Gaussians plus small noise; the fakes' latents
    are shrunk and shifted, as a G that covers part of the data and strays a little."""
    import numpy as np
    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    z_real = rng.standard_normal((n, latent), dtype=np.float32)
    z_fake = rng.standard_normal((n, latent), dtype=np.float32) * 0.8 + 0.3
    noise = 0.05
    real = z_real @ lift + noise * rng.standard_normal((n, dim), dtype=np.float32)
    fake = z_fake @ lift + noise * rng.standard_normal((n, dim), dtype=np.float32)
    return real, fake


def _status(key):
    """A /proc/self/status field in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(impl, n, dim, k, device):
    """One measurement, in this (fresh) process: prints a JSON line."""
    sys.path.insert(0, ROOT)
    real, fake = overlapping_features(n, dim)
    if impl == 'prdc':
        import contextlib
        import io

        import prdc

        def run():
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the counts
                return prdc.compute_prdc(real, fake, k)
    else:
        import torch

        import metrics
        run = (lambda: metrics.compute_prdc(real, fake, k, device=device))  # noqa: E731
        if device != 'cpu':
            torch.zeros(1, device=device)  # the context exists before the clock starts
    base = _status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident size
    print(f'BASE {base}', flush=True)
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    print(json.dumps({'impl': impl, 'n': n, 'seconds': seconds,
                      'peak_bytes': _status('VmHWM') - base, 'load': [load0, os.getloadavg()[0]],
                      'result': {key: float(v) for key, v in out.items()}}))


def measure(impl, n, dim, k, device, timeout=None):
    """Run child() in a fresh interpreter and return its JSON line. Past timeout seconds the
    child is stopped and what it reached is returned: the peak memory so far (reached within
    the first blocks, since the blocks are all alike) and 'seconds': None."""
    cmd = [sys.executable, os.path.abspath(__file__), '--child', impl, '--n', str(n),
           '--dim', str(dim), '--k', str(k), '--device', device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()
    if len(first) != 2 or first[0] != 'BASE':  # it failed before measuring anything
        proc.wait()
        raise ConfigError(f'{impl} at N = {n} failed before its measurement (exit status '
                          f'{proc.returncode})')
    base = int(first[1])
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with open(f'/proc/{proc.pid}/status') as f:
            hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
        proc.kill()
        proc.wait()
        return {'impl': impl, 'n': n, 'seconds': None, 'stopped_after': time.perf_counter() - start,
                'peak_bytes': hwm - base, 'load': [load0, os.getloadavg()[0]], 'result': {}}
    if proc.returncode:
        raise SystemExit(f'{impl} at N = {n} failed (exit status {proc.returncode})')
    return json.loads(out.strip().splitlines()[-1])


def row(r, note=''):
    gib = r['peak_bytes'] / 2 ** 30
    seconds = f"{r['seconds']:.1f}" if r['seconds'] is not None else '-'
    return (f"| {r['impl']} | {r['n']:,} | {seconds} | {gib:.2f} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} | {note} |")


def main():
    parser = ToolParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=bounded(int, '>= 2'), default=10000)
    parser.add_argument('--n_large', type=bounded(int, '>= 0'), default=50000, help='0: skip')
    parser.add_argument('--dim', type=bounded(int, '>= 1'), default=2048)
    parser.add_argument('--k', type=bounded(int, '>= 1'), default=5)
    parser.add_argument('--device', type=str, default='cpu',
                        help="ours only (the prdc package is numpy's)")
    parser.add_argument('--large_timeout', type=bounded(float, '> 0'), default=None,
                        help='Stop the --n_large run after this many seconds and report its '
                             'peak memory so far and the time projected from --n (O(N^2))')
    parser.add_argument('--child', type=str, default='', help=argparse.SUPPRESS)
    run_cli(run, parser, namespace=True)


def run(args):
    """The tool on its parsed flags."""
    if not args.k < args.n:
        raise ConfigError(f'--k {args.k} must be below --n {args.n}: the k-NN balls need k '
                          f'other points')
    if args.child:
        return child(args.child, args.n, args.dim, args.k, args.device)
    # Each child holds two sets of features (float32) and its float64 copies of a block.
    for n in (args.n, args.n_large):
        check_fits(2 * n * args.dim * (4 + 8), f'two sets of {n} features of {args.dim} '
                   f'dimensions', 'lower --n, --n_large or --dim')
    print(f'{os.cpu_count()} CPUs; features {args.dim}-d float32, nearest_k {args.k}, '
          f'ours on {args.device}')
    print('| implementation | N per side | seconds | peak extra memory (GiB) | load avg '
          'start / end | note |')
    print('|---|---|---|---|---|---|')
    ours = measure('metrics.compute_prdc', args.n, args.dim, args.k, args.device)
    print(row(ours), flush=True)
    theirs = measure('prdc', args.n, args.dim, args.k, args.device)
    need = prdc_package_need(args.n, args.n) / 2 ** 30
    print(row(theirs, f'computed need {need:.2f} GiB'), flush=True)
    diff = max(abs(ours['result'][key] - theirs['result'][key]) for key in ours['result'])
    if args.n_large:
        large = measure('metrics.compute_prdc', args.n_large, args.dim, args.k, args.device,
                        args.large_timeout)
        need = prdc_package_need(args.n_large, args.n_large) / 2 ** 30
        note = ''
        if large['seconds'] is None:
            projected = ours['seconds'] * (args.n_large / args.n) ** 2
            note = (f"stopped after {large['stopped_after']:.0f} s; time projected from "
                    f"N = {args.n:,}: {projected:.0f} s")
        print(row(large, note), flush=True)
        fits = 'fits' if need <= 24 else 'does not fit'
        print(f'| prdc | {args.n_large:,} | - | {need:.1f} (computed, not run) | - | '
              f'{fits} in 24 GiB |')
    print(f'largest difference of the four numbers at N = {args.n:,}: {diff:.3g}')
    print(f"ours: {ours['result']}")


if __name__ == '__main__':
    main()
