"""Cost of the per-iteration NaN/Inf check (checkpoints.check_finite_step) on the demo config.

Runs train.py's loop in-process on S32 with the demo's model flags, alternately with the check
and with it replaced by a no-op, and prints the steady-state s/it of each (median of --reps)
and the check's own time per call.

    python tools/bench_finite_check.py --itrs 80 --reps 3
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# First: a Ctrl-C during the slow imports below is one line (flags.py).
from flags import ToolParser, bounded, run_cli

# isort: split
import statistics
import tempfile
import time

import train
import utils

DEMO = ('--dataset S32 --experiment_name bench --G_ch 8 --D_ch 8 --G_attn 0 --D_attn 0 '
        '--G_shared --shared_dim 32 --hier --dim_z 64 --batch_size 16 --channels_last --ema '
        '--use_ema --ema_decay 0.99 --ema_start 100 --seed 0 --num_epochs 100 --shuffle '
        '--num_workers 0 --no_pin_memory --num_D_steps 1 --G_lr 5e-4 --D_lr 5e-4 --G_B1 0.5 '
        '--D_B1 0.5 --G_init ortho --D_init ortho --save_every 0 --test_every 0 '
        '--sv_log_interval 0 --device cpu --pbar tqdm').split()
SKIP = 10  # warm-up iterations left out of the timing


def timed_run(data_root, itrs, check):
    """Seconds per iteration after SKIP, with train.check_finite_step set to check."""
    stamps = []
    real_step, real_check = train.train_fns.GAN_training_function, train.check_finite_step

    def stamped(*args, **kwargs):
        step = real_step(*args, **kwargs)

        def train_(x, y):
            stamps.append(time.perf_counter())
            return step(x, y)
        return train_
    train.train_fns.GAN_training_function, train.check_finite_step = stamped, check
    try:
        with tempfile.TemporaryDirectory() as out:
            train.run(vars(utils.prepare_parser().parse_args(DEMO + [
                '--data_root', data_root, '--weights_root', out, '--logs_root', out,
                '--samples_root', out, '--total_itrs', str(itrs)])))
    finally:
        train.train_fns.GAN_training_function, train.check_finite_step = real_step, real_check
    return (stamps[-1] - stamps[SKIP]) / (len(stamps) - SKIP - 1)


def main():
    parser = ToolParser(description=__doc__.split('\n')[0])
    parser.add_argument('--itrs', type=bounded(int, '[12, 1000000]'), default=80)
    parser.add_argument('--reps', type=bounded(int, '[1, 1000]'), default=3)
    parser.add_argument('--data_root', type=str, default='data')
    run_cli(run, parser, namespace=True)


def run(args):
    """The tool on its parsed flags."""
    real, calls = train.check_finite_step, []

    def check(*a, **k):
        start = time.perf_counter()
        real(*a, **k)
        calls.append(time.perf_counter() - start)
    results = {'with the check': [], 'without': []}
    for _ in range(args.reps):
        results['with the check'].append(timed_run(args.data_root, args.itrs, check))
        results['without'].append(timed_run(args.data_root, args.itrs, lambda *a, **k: None))
    for mode, times in results.items():
        reps = ' '.join(f'{t:.4f}' for t in times)
        print(f'{mode}: {statistics.median(times):.4f} s/it (reps {reps})')
    print(f'the check itself: {statistics.median(calls) * 1e6:.1f} us per call '
          f'({len(calls)} calls)')


if __name__ == '__main__':
    main()
