"""Time plot_logs.py per figure on synthetic logs of --points points.

Writes, in a temporary logs_root, an experiment shaped like the release's I128 bs256x8 run
(41 G and 23 D singular-value logs, the three losses, a _log.jsonl) with --points lines in
every file, then prints the median seconds of reading the logs, of each figure (drawn and
saved as PNG) and of the whole command in a fresh process (imports included).

Run: .venv/bin/python tools/bench_plot_logs.py [--points 67] [--repeats 5]
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ToolParser, bounded, run_cli

# isort: split
import contextlib
import io
import json
import subprocess
import tempfile
import time

import numpy as np

import plot_logs
from files import check_fits


def write_logs(logs_root, name, points, n_G=41, n_D=23, every=2000):
    """Losses, n_G + n_D singular values and tests, points lines each, in the release's style."""
    rng = np.random.default_rng(0)
    folder = os.path.join(logs_root, name)
    os.makedirs(folder)
    itr = every * np.arange(1, points + 1)
    metrics = ['G_loss', 'D_loss_real', 'D_loss_fake']
    metrics += [f'G_layer{i}_sv0' for i in range(n_G)] + [f'D_layer{i}_sv0' for i in range(n_D)]
    for metric in metrics:
        with open(os.path.join(folder, metric + '.log'), 'w') as f:
            f.writelines(f'{i}: {v:3.3e}\n' for i, v in zip(itr, rng.uniform(0.1, 3, points)))
    with open(os.path.join(logs_root, name + '_log.jsonl'), 'w') as f:
        for k, i in enumerate(itr):
            f.write(json.dumps({'itr': int(i), 'IS_mean': 10 + k, 'IS_std': 0.5,
                                'FID': 100 - k, '_stamp': 1.5e9 + 3600.0 * k}) + '\n')


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    parser = ToolParser(description=__doc__.split('\n')[0])
    parser.add_argument('--points', type=bounded(int, '>= 1'), default=67)
    parser.add_argument('--repeats', type=bounded(int, '[1, 1000]'), default=5)
    run_cli(run, parser, namespace=True)


def run(args):
    """The tool on its parsed flags."""
    check_fits(1000 * args.points, f'--points {args.points} log points',
               'use fewer --points')  # each point: a few logs of a few numbers, read and drawn
    with tempfile.TemporaryDirectory() as logs_root:
        write_logs(logs_root, 'run', args.points)
        plot_logs.pyplot()  # imported once, outside the timings
        run = plot_logs.read_experiment(logs_root, 'run')
        read = median_time(lambda: plot_logs.read_experiment(logs_root, 'run'), args.repeats)
        rows = [(f"read_experiment ({len(run['metrics']) + 1} files)", read)]
        figures = [('IS_FID.png', lambda: plot_logs.figure_IS_FID(run)),
                   ('IS_FID.png --x time', lambda: plot_logs.figure_IS_FID(run, 'time')),
                   ('losses.png', lambda: plot_logs.figure_losses(run, 100)),
                   ('G_singular_values.png', lambda: plot_logs.figure_svs(run, 'G')),
                   ('D_singular_values.png', lambda: plot_logs.figure_svs(run, 'D')),
                   ('compare_IS_FID.png (2 runs)', lambda: plot_logs.figure_compare([run, run]))]
        path = os.path.join(logs_root, 'bench.png')
        with contextlib.redirect_stdout(io.StringIO()):  # save() names each file it writes
            for label, make in figures:
                rows.append((label, median_time(lambda make=make: plot_logs.save(make(), path),
                                                args.repeats)))
        command = [sys.executable, os.path.join(ROOT, 'plot_logs.py'), '--experiment_name',
                   'run', '--logs_root', logs_root]
        rows.append(('python plot_logs.py (4 figures, imports)', median_time(
            lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL),
            args.repeats)))
    print(f'{args.points} points per log, median of {args.repeats}')
    for label, seconds in rows:
        print(f'{label:<42} {seconds:7.3f} s')


if __name__ == '__main__':
    main()
