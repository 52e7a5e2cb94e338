"""Plot a run's logs as PNGs beside them: IS/FID, losses, singular values; compare runs.

    python plot_logs.py --experiment_name NAME --logs_root logs
    python plot_logs.py --experiment_name 'BigGAN_I128*' OTHER --x time

With --collapse, each run's logs are also judged by the collapse watch's rule (collapse.py):
`collapse at itr N: <signals>` and the checkpoints before it, or `no collapse found`, and the
onsets are marked on the figures.

For each experiment, into logs_root/NAME/: IS_FID.png (from logs_root/NAME_log.jsonl),
metrics.png when the tests logged KID, precision, recall, density, coverage or intraFID,
losses.png, G_singular_values.png and D_singular_values.png (from logs_root/NAME/*.log); with
several experiments also logs_root/compare_IS_FID.png. What the release's MATLAB scripts
(process_inception_log.m, process_training.m, compare_IS.m) showed. Logs that are still being
written plot what is complete.

Figures are written through the project's atomic write (files.atomic_open). Logs are read
through files.read_lines only: anything but a regular file (a FIFO, a device) is refused in one
line, as is a line longer than MAX_LINE; lines whose numbers no figure can hold (an iteration
beyond int64, a finite value beyond VALUE_LIMIT) are skipped with a notice.
"""
import flags  # first: a Ctrl-C during the slow imports below is one line (flags.py)

# isort: split
import fnmatch
import json
import math
import os
import re
import warnings

import numpy as np

import collapse
import files

FIGURES = {'IS_FID': 'IS_FID.png', 'metrics': 'metrics.png', 'losses': 'losses.png',
           'G_sv': 'G_singular_values.png', 'D_sv': 'D_singular_values.png'}
SIZES = {'IS_FID': (12, 4.5), 'losses': (12, 4.5), 'sv': (10, 6), 'compare': (12, 6)}  # inches
PANEL = (4, 4.5)  # inches per panel of the metrics figures
DPI = 100
SV_LOG = re.compile(r'([GD])_.*sv\d+$')  # utils.get_SVs' names: G_blocks_0_0_conv1_sv0
MAX_LINE = 1 << 20   # bytes; the loggers write lines of at most a few kB
ITR_LIMIT = 1 << 63  # iterations are plotted as int64
# What a log may make a figure draw: title labels and key names (their glyphs are drawn one by
# one) and the number of distinct keys read.
MAX_LABEL, MAX_KEY, MAX_KEYS = 100, 64, 256
# .log files read per run: the release logs three losses and two singular values per SN layer
# (a few hundred at most for BigGAN-deep at 512), so thousands are not a run of this code.
MAX_LOGS = 1024
# Finite values larger than this are no loss or score: matplotlib's ranges and ticks overflow
# on them. NaN and inf are kept (drawn as gaps), as the loggers may write them.
VALUE_LIMIT = 1e100
# The values a test's result can take, by record key: an IS is exp of a mean KL divergence
# (>= 1), a FID a distance, a std a spread, precision, recall and coverage shares. A logged
# value outside them (a FID of -20, an IS of inf) is a damaged log, so it is not drawn or
# starred as the best, as train.py never logs one (inception_utils.valid_fid).
POSSIBLE = {'IS_mean': (1 - 1e-6, math.inf), 'IS_std': (0, math.inf), 'FID': (0, math.inf),
            'KID_mean': (-math.inf, math.inf), 'KID_std': (0, math.inf),
            'precision': (0, 1), 'recall': (0, 1), 'density': (0, math.inf),
            'coverage': (0, 1), 'intraFID': (0, math.inf)}


def prepare_parser():
    parser = flags.new_parser(__doc__.split('\n')[0])
    parser.add_argument('--experiment_name', type=str, nargs='+', required=True,
                        help='Experiments to plot: names or shell-style patterns matched '
                             'against the experiments in logs_root')
    parser.add_argument('--logs_root', type=str, default='logs',
                        help='Folder holding NAME/ and NAME_log.jsonl')
    parser.add_argument('--x', type=str, default='itr', choices=['itr', 'time'],
                        help='x axis of the IS/FID figures: iterations, or hours since the '
                             "start from the tests' _stamp (the .log files carry no times, so "
                             'losses and singular values stay on iterations)')
    parser.add_argument('--smooth', type=int, default=100,
                        help='Window (logged points) of the moving average drawn over the '
                             'raw losses; 1: none')
    parser.add_argument('--mix_protocols', action='store_true', default=False,
                        help='Draw tests measured under different protocols (backend, weights, '
                             "fakes, reference, ...; the release's logs carry none) on one "
                             'axis; refused without it')
    parser.add_argument('--compare_out', type=str, default='',
                        help='Path of the comparison figure when several experiments are '
                             'named (default: logs_root/compare_IS_FID.png)')
    parser.add_argument('--collapse', action='store_true', default=False,
                        help="Judge each run's logs for a collapse with the collapse watch's "
                             'rule, print where it starts (or that none was found) and mark '
                             'it on the figures')
    return parser


# ----------------------------------------------------------------------------
# Reading.

def complete_lines(path):
    """The lines of a regular text file, without one still being written (no newline yet)."""
    lines = list(files.read_lines(path, 'log', MAX_LINE))
    if lines and not lines[-1].endswith('\n'):
        lines.pop()
    return [line.rstrip('\r\n') for line in lines]


def plottable(value):
    """Whether a logged value can be drawn: NaN, inf, or finite within VALUE_LIMIT."""
    return not math.isfinite(value) or abs(value) <= VALUE_LIMIT


def skipped_notice(path, count, why):
    if count:
        print(f'{path}: skipped {count} line{"s" * (count > 1)} {why}')


def latest(itr):
    """Mask keeping, where a resumed run logged iterations again, the later lines: a line
    stays if every later line has a larger iteration."""
    later_min = np.append(np.minimum.accumulate(itr[::-1])[::-1][1:], np.inf)
    return itr < later_min


def read_metric_log(path):
    """(itr, values) of a MyLogger file, lines `itr: value`. The value may be in any %-style
    that prints a number (%3.3e, %3.3f, %g, %d, %s; nan and inf too); other lines are skipped."""
    itr, values, beyond = [], [], 0
    for line in complete_lines(path):
        left, _, right = line.partition(':')
        try:
            i, v = int(left), float(right)
        except ValueError:
            continue
        if not -ITR_LIMIT <= i < ITR_LIMIT or not plottable(v):
            beyond += 1
            continue
        itr.append(i)
        values.append(v)
    skipped_notice(path, beyond, f'whose iteration lies beyond int64 or whose value beyond '
                                 f'{VALUE_LIMIT:g}')
    itr, values = np.array(itr, dtype=np.int64), np.array(values, dtype=np.float64)
    keep = latest(itr)
    return itr[keep], values[keep]


def protocol_key(record):
    """A record's protocol stamp as a canonical JSON string without the seed (which draw, not
    how it was measured); None for a record without one (the release's logs)."""
    protocol = record.get('protocol')
    if not isinstance(protocol, dict):
        return None
    return json.dumps({k: v for k, v in protocol.items() if k != 'seed'}, sort_keys=True)


def read_jsonl(path, protocols=False):
    """{key: array} of a MetricsLogger file's numeric fields (itr, IS_mean, IS_std, FID, _stamp,
    KID_mean, ...), NaN where a record lacks a key; records without itr are skipped. With
    protocols, also the list of each kept record's protocol_key."""
    records, beyond, impossible = [], 0, 0
    for line in complete_lines(path):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            continue
        if (not isinstance(record, dict) or not isinstance(record.get('itr'), (int, float))
                or isinstance(record['itr'], bool)
                or 'event' in record):  # the collapse watch's records are no test
            continue
        try:
            # Every number as the float64 it is plotted as; an iteration must be a count.
            record = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                      else v for k, v in record.items()}
        except OverflowError:
            beyond += 1
            continue
        if (not -ITR_LIMIT <= record['itr'] < ITR_LIMIT
                or not all(plottable(v) for v in record.values() if isinstance(v, float))):
            beyond += 1
            continue
        for key, (low, high) in POSSIBLE.items():
            value = record.get(key)
            if isinstance(value, float) and not (math.isfinite(value) and low <= value <= high):
                record[key] = math.nan
                impossible += 1
        records.append(record)
    skipped_notice(path, beyond, f'with a number beyond {VALUE_LIMIT:g} or an iteration that '
                                 f'is not an int64 count')
    if impossible:
        print(f'{path}: left out {impossible} value{"s" * (impossible > 1)} no test can give '
              f'(a FID below 0, an IS below 1, a share outside [0, 1], NaN or inf)')
    keys = sorted({k for r in records for k, v in r.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and len(k) <= MAX_KEY})
    # Each key becomes an array as long as the log: a log inventing new keys on every line
    # would grow as keys x records, so only the first MAX_KEYS keys (itr always) are kept.
    if len(keys) > MAX_KEYS:
        print(f'note: {path}: {len(keys)} numeric keys, only the first {MAX_KEYS} are read')
        keys = ['itr'] + [k for k in keys if k != 'itr'][:MAX_KEYS - 1]
    # A key numeric in one record and of another type in the next is NaN there.
    series = {k: np.array([r[k] if isinstance(r.get(k), float) else np.nan for r in records],
                          dtype=np.float64) for k in keys}
    stamps = [protocol_key(r) for r in records]
    if records:
        keep = latest(series['itr'])
        series = {k: v[keep] for k, v in series.items()}
        stamps = [p for p, kept in zip(stamps, keep) if kept]
    return (series, stamps) if protocols else series


def read_events(path):
    """The records of a MetricsLogger file that carry an 'event' (the collapse watch's), in
    file order."""
    events = []
    for line in complete_lines(path):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and 'event' in record and isinstance(
                record.get('itr'), int):
            events.append(record)
    return events


def save_every(logs_root, name):
    """The run's --save_every from its metalog.txt, or 0 when it has none."""
    path = os.path.join(logs_root, name, 'metalog.txt')
    if not os.path.isfile(path):
        return 0
    for line in complete_lines(path):
        # The whole number as the run's config repr wrote it (not the 10 of 10**30).
        found = re.search(r"'save_every': (\d+)[,}]", line)
        if line.startswith('config:') and found:
            return int(found[1])
    return 0


def hours(tests):
    """Hours since the run's start for each test. The logs do not record the start, so it is
    extrapolated back to iteration 0 at the pace between the first two tests."""
    if '_stamp' not in tests:
        raise flags.ConfigError('a _log.jsonl without _stamp times: plot it with --x itr')
    stamp, itr = tests['_stamp'], tests['itr']
    start = stamp[0]
    if len(stamp) > 1 and itr[1] > itr[0]:
        start -= itr[0] * (stamp[1] - stamp[0]) / (itr[1] - itr[0])
    return (stamp - start) / 3600.0


def experiment_names(logs_root):
    """Every experiment with logs in logs_root: a folder of .log files or a NAME_log.jsonl."""
    names = set()
    for entry in os.listdir(logs_root):
        path = os.path.join(logs_root, entry)
        if entry.endswith('_log.jsonl') and os.path.isfile(path):
            names.add(entry[:-len('_log.jsonl')])
        elif os.path.isdir(path) and any(f.endswith('.log') for f in os.listdir(path)):
            names.add(entry)
    return names


def resolve(patterns, logs_root):
    """The experiments the names and patterns denote, in order, each once."""
    if not os.path.isdir(logs_root):
        raise flags.ConfigError(f'no logs_root folder {logs_root}: pass --logs_root')
    available = experiment_names(logs_root)
    out = []
    for pattern in patterns:
        # A name train.py accepts may hold glob characters (r[1]): it names itself first.
        found = [pattern] if pattern in available else sorted(fnmatch.filter(available, pattern))
        if not found:
            raise flags.ConfigError(f'no logs of {pattern} in {logs_root} (looked for '
                                    f'{pattern}/ with .log files and {pattern}_log.jsonl)')
        out += [name for name in found if name not in out]
    return out


def read_experiment(logs_root, name):
    """A run's logs: {'name', 'tests': read_jsonl's series ({} without tests), 'metrics':
    {metric: (itr, values)} of every logs_root/name/*.log, 'events': read_events' records}."""
    jsonl = os.path.join(logs_root, name + '_log.jsonl')
    folder = os.path.join(logs_root, name)
    metrics = {}
    if os.path.isdir(folder):
        logs = sorted((f for f in os.listdir(folder) if f.endswith('.log')),
                      key=lambda f: (not f.startswith(('G_loss', 'D_loss')), f))  # losses first
        if len(logs) > MAX_LOGS:
            print(f'note: {folder}: {len(logs)} .log files, only the first {MAX_LOGS} (the '
                  f'losses first) are read')
        for f in logs[:MAX_LOGS]:
            metrics[f[:-4]] = read_metric_log(os.path.join(folder, f))
    tests, stamps = read_jsonl(jsonl, protocols=True) if os.path.exists(jsonl) else ({}, [])
    events = read_events(jsonl) if os.path.exists(jsonl) else []
    tested = bool(len(tests.get('itr', ())))
    return {'name': name, 'tests': tests if tested else {}, 'metrics': metrics,
            'events': events, 'protocols': stamps if tested else []}


def protocol_label(key):
    """A short name of a protocol_key for titles: backend, fakes and reference, or 'unknown
    protocol' (the release's logs carry none)."""
    if key is None:
        return 'unknown protocol'
    p = json.loads(key)
    ref = p.get('reference')
    ref = ref if isinstance(ref, dict) else {}
    label = (f"{p.get('backend')}, {p.get('num_fakes')} fakes"
             + (f", vs {ref.get('dataset')} {ref.get('split')}" if ref else ''))
    # A title is drawn glyph by glyph: a stamp's values come from the log, so cap its length.
    return label if len(label) <= MAX_LABEL else label[:MAX_LABEL - 3] + '...'


def check_protocols(runs, mix=False):
    """Refuse, unless mix, to draw tests of different protocols on one axis (within a run or
    across the runs compared), naming the fields that differ. Returns the label the titles
    carry."""
    keys = list(dict.fromkeys(k for r in runs for k in r.get('protocols', [])))
    if len(keys) > 1 and not mix:
        names = ', '.join(dict.fromkeys(r['name'] for r in runs))
        if None in keys:
            diff = ['a stamp (some records have none)']
        else:
            stamps = [json.loads(k) for k in keys]
            fields = sorted({f for p in stamps for f in p})
            diff = [f for f in fields if any(p.get(f) != stamps[0].get(f) for p in stamps)]
        raise flags.ConfigError(
            f"the tests of {names} were measured under {len(keys)} protocols (differing in "
            f"{', '.join(diff)}); plot them apart, or pass --mix_protocols")
    return protocol_label(keys[0]) if len(keys) == 1 else 'mixed protocols'



def smooth(values, window):
    """Trailing moving average over window points (fewer at the start); NaNs are skipped."""
    window = min(window, len(values))  # a wider window averages the same points
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    lo = np.arange(len(values)) - window
    lower_sums = np.where(lo >= 0, sums[np.maximum(lo, 0)], 0.0)
    lower_counts = np.where(lo >= 0, counts[np.maximum(lo, 0)], 0)
    n = counts - lower_counts
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(n > 0, (sums - lower_sums) / n, np.nan)


# ----------------------------------------------------------------------------
# Figures.

def pyplot():
    """matplotlib's pyplot on the Agg backend, or a ConfigError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise flags.ConfigError('plot_logs.py needs matplotlib: pip install matplotlib'
                                ) from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def new_figure(size, ncols=1):
    fig, axes = pyplot().subplots(1, ncols, figsize=size, dpi=DPI, squeeze=False)
    return fig, list(axes[0])


def x_of(tests, x):
    return (hours(tests), 'hours since start (estimated)') if x == 'time' else (
        tests['itr'], 'iteration')


def figure_IS_FID(run, x='itr'):
    """IS (with its std as a band) and FID of one run's tests, best points marked."""
    fig, (ax_is, ax_fid) = new_figure(SIZES['IS_FID'], 2)
    tests = run['tests']
    xs, label = x_of(tests, x)
    for ax, key, best in [(ax_is, 'IS_mean', np.nanargmax), (ax_fid, 'FID', np.nanargmin)]:
        ys = tests.get(key, np.full(len(xs), np.nan))
        ax.plot(xs, ys, '.-', label=key)
        if key == 'IS_mean' and 'IS_std' in tests:
            ax.fill_between(xs, ys - tests['IS_std'], ys + tests['IS_std'], alpha=0.2,
                            label='IS +/- std')
        if np.isfinite(ys).any():
            b = best(ys)
            ax.plot(xs[b], ys[b], '*', color='red', markersize=14,
                    label=f"best {ys[b]:.4g} at itr {int(tests['itr'][b])}")
        ax.set_xlabel(label)
        ax.set_title(f"{run['name']}: {'IS' if key == 'IS_mean' else 'FID'}\n"
                     f"{check_protocols([run], mix=True)}",
                     fontsize='small')
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    return fig


def other_metrics(tests_list):
    """(key, title, higher is better) of the metrics beyond IS and FID (metrics.BEST) that
    any of the tests logged."""
    from metrics import BEST  # torch comes with it: only once there is a figure
    return [(key, name, higher) for name, (key, higher) in BEST.items()
            if name not in ('IS', 'FID') and any(key in t for t in tests_list)]


def figure_metrics(run, x='itr'):
    """One panel per metric beyond IS and FID (KID, precision, recall, density, coverage,
    intraFID), the best point marked in the metric's own direction."""
    tests = run['tests']
    panels = other_metrics([tests])
    fig, axes = new_figure((PANEL[0] * len(panels), PANEL[1]), len(panels))
    xs, label = x_of(tests, x)
    for ax, (key, name, higher) in zip(axes, panels):
        ys = tests[key]
        ax.plot(xs, ys, '.-', label=key)
        if np.isfinite(ys).any():
            b = (np.nanargmax if higher else np.nanargmin)(ys)
            ax.plot(xs[b], ys[b], '*', color='red', markersize=14,
                    label=f"best {ys[b]:.4g} at itr {int(tests['itr'][b])}")
        ax.set_xlabel(label)
        ax.set_title(f"{run['name']}: {name} ({'higher' if higher else 'lower'} is better)"
                     f"\n{check_protocols([run], mix=True)}",
                     fontsize='small')
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    return fig


def figure_losses(run, window=100):
    """G's loss and D's two losses against iteration, raw (faint) and smoothed; the y range
    leaves out the most extreme 0.5% at each end (the first iterations' spikes)."""
    fig, axes = new_figure(SIZES['losses'], 2)
    groups = [(axes[0], ['G_loss']), (axes[1], ['D_loss_real', 'D_loss_fake'])]
    for ax, names in groups:
        shown = []
        for name in names:
            if name not in run['metrics']:
                continue
            itr, values = run['metrics'][name]
            raw, = ax.plot(itr, values, alpha=0.3, linewidth=0.8, label=name)
            if window > 1:
                ax.plot(itr, smooth(values, window), color=raw.get_color(), linewidth=1.5,
                        label=f'{name} (mean of {window})')
            shown.append(values[np.isfinite(values)])
        shown = np.concatenate(shown) if shown else np.zeros(0)
        if len(shown) > 1:
            lo, hi = np.percentile(shown, [0.5, 99.5])
            if hi > lo:
                ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
        ax.set_xlabel('iteration')
        ax.set_title(f"{run['name']}: {'G loss' if len(names) == 1 else 'D losses'}",
                     fontsize='small')
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize='small')
    fig.tight_layout()
    return fig


def sv_names(run, net):
    """The singular-value logs of G or D, in file-name order."""
    return [name for name in run['metrics']
            if SV_LOG.match(name) and SV_LOG.match(name).group(1) == net]


def figure_svs(run, net):
    """One line per logged singular value of net ('G' or 'D'), log scale."""
    fig, (ax,) = new_figure(SIZES['sv'])
    names = sv_names(run, net)
    # Colours run through a map in file (roughly depth) order, so 40 lines stay tellable.
    colors = pyplot().get_cmap('turbo')(np.linspace(0.05, 0.95, max(len(names), 1)))
    for name, color in zip(names, colors):
        itr, values = run['metrics'][name]
        ax.plot(itr, values, linewidth=1, color=color, label=name[2:])
    ax.set_yscale('log')
    # Plain numbers (1.2, not 1.2 x 10^0): the values mostly sit within a decade.
    ax.yaxis.set_major_formatter('{x:g}')
    ax.yaxis.set_minor_formatter('{x:g}')
    ax.set_xlabel('iteration')
    ax.set_title(f"{run['name']}: {net} singular values", fontsize='small')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize='xx-small', ncol=1 + len(names) // 20, loc='center left',
              bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def figure_compare(runs, x='itr'):
    """IS and FID of several runs on shared axes (the release's compare_IS.m), then one panel
    per further metric any of them logged."""
    extra = other_metrics([run['tests'] for run in runs])
    panels = [('IS_mean', 'Inception Score'), ('FID', 'FID')] + [
        (key, name) for key, name, _ in extra]
    size = SIZES['compare'] if not extra else (PANEL[0] * len(panels), SIZES['compare'][1])
    fig, axes = new_figure(size, len(panels))
    ax_is = axes[0]
    for run in runs:
        xs, label = x_of(run['tests'], x)
        for ax, (key, _) in zip(axes, panels):
            ax.plot(xs, run['tests'].get(key, np.full(len(xs), np.nan)), '.-',
                    label=run['name'])
            ax.set_xlabel(label)
    label = check_protocols(runs, mix=True)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(f'{title}\n{label}', fontsize='small')
        ax.grid(alpha=0.3)
    # Experiment names are long: one legend under both panels.
    fig.legend(*ax_is.get_legend_handles_labels(), loc='lower center', fontsize='x-small',
               ncol=1 + len(runs) // 6)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * min(len(runs), 6), 1, 1))
    return fig


def save(fig, path):
    """Write fig as a PNG, atomically (a reader never sees half a PNG), and free it."""
    from files import atomic_open  # torch comes with it: only once there is a figure
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format='png', dpi=DPI)
    finally:
        pyplot().close(fig)
    print(f'wrote {path}')


def mark_onsets(fig, onsets):
    """A dashed red line at each collapse onset on every panel of fig."""
    for ax in fig.axes:
        for i, onset in enumerate(onsets):
            ax.axvline(onset, color='red', linestyle='--', linewidth=1,
                       label='collapse onset' if i == 0 else None)


def report_collapse(run, logs_root):
    """Judge a run's logs with the collapse rule and print what it finds; returns the onsets."""
    every = save_every(logs_root, run['name'])
    detector = collapse.scan(run, every, collapse.rollback_itrs(run))
    if not detector.collapses:
        print(f"{run['name']}: no collapse found")
    for found in detector.collapses:
        print(f'collapse at itr {found.onset}: {collapse.signal_names(found.signals)}')
        last = f'itr {(found.onset - 1) // every * every}' if every else (
            'unknown (no save_every in metalog.txt)')
        healthy = f'itr {found.healthy}' if found.healthy is not None else 'none'
        print(f'  last checkpoint before it: {last}; last healthy one by the rule: {healthy} '
              f'(the _healthy set of a run with --collapse_watch)')
    return [found.onset for found in detector.collapses]


def plot_run(run, logs_root, x='itr', window=100, onsets=()):
    """The figures one run's logs allow, beside its logs, collapse onsets marked; returns
    their paths."""
    folder = files.own_folder(logs_root, run['name'])
    figures = []
    if run['tests']:
        figures.append(('IS_FID', lambda: figure_IS_FID(run, x)))
        if other_metrics([run['tests']]):
            figures.append(('metrics', lambda: figure_metrics(run, x)))
    if any(name in run['metrics'] for name in ('G_loss', 'D_loss_real', 'D_loss_fake')):
        figures.append(('losses', lambda: figure_losses(run, window)))
    for net in 'GD':
        if sv_names(run, net):
            figures.append((net + '_sv', lambda net=net: figure_svs(run, net)))
    paths = []
    for key, make in figures:
        paths.append(os.path.join(folder, FIGURES[key]))
        fig = make()
        if not (key == 'IS_FID' and x == 'time'):
            mark_onsets(fig, onsets)
        save(fig, paths[-1])
    return paths


def run(config):
    flags.check_flags(config)  # its own keys only: here the logs root
    pyplot()  # a missing matplotlib stops us before any reading
    if config['smooth'] < 1:
        raise flags.ConfigError(f"--smooth is a window of logged points, >= 1 (1: none), "
                                f"got {config['smooth']}")
    logs_root = config['logs_root']
    runs = [read_experiment(logs_root, name)
            for name in resolve(config['experiment_name'], logs_root)]
    # Every protocol check comes before any figure is written.
    mix = config.get('mix_protocols', False)
    for r in runs:
        check_protocols([r], mix)
    tested = [r for r in runs if r['tests']]
    if len(runs) > 1 and tested:
        check_protocols(tested, mix)
    # So is every run's folder: a linked one among several must stop us before the others'
    # figures are written, not half-way through.
    for r in runs:
        files.own_folder(logs_root, r['name'])
    compare_out = config['compare_out'] or os.path.join(logs_root, 'compare_IS_FID.png')
    if len(runs) > 1 and tested and not os.path.isdir(os.path.dirname(compare_out) or '.'):
        raise flags.ConfigError(f'--compare_out {compare_out}: {os.path.dirname(compare_out)} '
                                f'is not a folder; give a path in an existing folder')
    paths = []
    with warnings.catch_warnings():
        # matplotlib's, as it draws what the logs hold (a legend placed slowly over a million
        # points, a log axis with no positive value), attributed to the line here that called
        # it: the figures are written all the same.
        warnings.simplefilter('ignore', UserWarning)
        for r in runs:
            onsets = report_collapse(r, logs_root) if config['collapse'] else ()
            paths += plot_run(r, logs_root, config['x'], config['smooth'], onsets)
            if not r['tests']:
                print(f"{r['name']}: no tests logged ({r['name']}_log.jsonl), so no IS/FID "
                      f'figure')
        if len(runs) > 1 and tested:
            paths.append(compare_out)
            save(figure_compare(tested, config['x']), paths[-1])
    return paths


def main(argv=None):
    flags.run_cli(run, prepare_parser(), argv)


if __name__ == '__main__':
    main()
