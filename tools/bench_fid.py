"""Benchmark the Frechet distance against scipy.linalg.sqrtm.

Builds pairs of random D-dimensional covariances with prescribed condition
numbers, and for each pair prints the time of scipy's sqrtm route (the
release's numpy path), of our numpy and torch entry points, the speed
ratios, and the relative error of each against a float64 eigenvalue
reference (the square roots of the eigenvalues of sigma1 @ sigma2, found
by a general non-symmetric solver, i.e. independently of our method).

Run: .venv/bin/python tools/bench_fid.py [--dim 2048] [--conds 1e1 1e3 1e5]
     [--repeats 2]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ToolParser, bounded, run_cli

# isort: split
import time

import numpy as np
import scipy.linalg

import inception_utils
from files import check_fits


def random_cov(dim, cond, rng):
    """Random SPD matrix with a log-uniform spectrum of condition `cond`."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    eigvals = np.logspace(0, -np.log10(cond), dim)
    return (q * eigvals) @ q.T


def reference_fid(mu1, s1, mu2, s2):
    """FID from the eigenvalues of sigma1 @ sigma2 (non-symmetric solver)."""
    ev = np.linalg.eigvals(s1 @ s2)
    tr = np.sqrt(np.clip(ev.real, 0, None)).sum()
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr


def scipy_fid(mu1, s1, mu2, s2):
    """The release's numpy route: scipy.linalg.sqrtm of the product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(covmean).real)


def timed_interleaved(fns, args, repeats):
    """Best time of each fn over `repeats` rounds, the fns alternating.

    On a shared machine the load drifts; alternating the methods within
    each round and keeping each one's best exposes them to the same load.
    """
    results, best = [None] * len(fns), [float('inf')] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn(*args)
            best[i] = min(best[i], time.perf_counter() - start)
    return results, best


def main():
    """Run the benchmark and print one line per condition number."""
    parser = ToolParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dim', type=bounded(int, '>= 1'), default=2048)
    parser.add_argument('--conds', type=bounded(float, '>= 1'), nargs='+',
                        default=[1e1, 1e3, 1e5])
    parser.add_argument('--seed', type=bounded(int, '[0, 4294967295]'), default=0)
    parser.add_argument('--repeats', type=bounded(int, '[1, 1000]'), default=3,
                        help='timing rounds (each method\'s best is kept)')
    run_cli(run, parser, namespace=True)


def run(args):
    """The tool on its parsed flags."""
    # Two covariances, their square roots and the methods' work arrays: ~12 of dim^2 float64.
    check_fits(12 * 8 * args.dim ** 2, f'--dim {args.dim} covariances', 'use a smaller --dim')
    rng = np.random.default_rng(args.seed)
    worst_err, ratios = 0.0, []
    print(f'dim={args.dim} repeats={args.repeats} cpus={os.cpu_count()} '
          f'load average={os.getloadavg()[0]:.1f}')
    for cond in args.conds:
        s1 = random_cov(args.dim, cond, rng)
        s2 = random_cov(args.dim, cond, rng)
        mu1 = rng.standard_normal(args.dim) * 0.1
        mu2 = rng.standard_normal(args.dim) * 0.1
        ref = reference_fid(mu1, s1, mu2, s2)
        (sp, fid_np, fid_t), (t_sp, t_np, t_t) = timed_interleaved(
            [scipy_fid, inception_utils.numpy_calculate_frechet_distance,
             inception_utils.torch_calculate_frechet_distance],
            (mu1, s1, mu2, s2), args.repeats)
        fid_t = float(fid_t)
        err_np = abs(fid_np - ref) / abs(ref)
        err_t = abs(fid_t - ref) / abs(ref)
        worst_err = max(worst_err, err_np, err_t)
        ratios += [t_sp / t_np, t_sp / t_t]
        print(f'cond={cond:.0e} ref={ref:.10g} | scipy {t_sp:.2f}s '
              f'relerr={abs(sp - ref) / abs(ref):.2e} | numpy {t_np:.2f}s '
              f'x{t_sp / t_np:.1f} relerr={err_np:.2e} | torch {t_t:.2f}s '
              f'x{t_sp / t_t:.1f} relerr={err_t:.2e}')
    print(f'load average={os.getloadavg()[0]:.1f}; '
          f'min speed-up vs scipy: {min(ratios):.1f}x; '
          f'largest relative error: {worst_err:.2e}')


if __name__ == '__main__':
    main()
