"""Watching a run: plot_logs.py on the release's log formats and on a demo-config run,
train.py --tensorboard read back with TensorBoard's reader, scripts/utils/duplicate.sh."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import inception_utils
import plot_logs
import train
import train_fns
import utils
from helpers import ROOT, demo_flags

pytestmark = pytest.mark.slow  # end to end: see pytest.ini

NAME = 'demo'
SIZES = {'IS_FID.png': (1200, 450), 'losses.png': (1200, 450),
         'G_singular_values.png': (1000, 600), 'D_singular_values.png': (1000, 600)}
# What the fake Inception metrics return at each test (IS, IS std, FID, KID mean and std).
METRICS = [(2.5, 0.125, 310.0, 0.75, 0.01), (3.25, 0.25, 290.5, 0.5, 0.02)]


def roots(out):
    return ['--weights_root', str(out / 'weights'), '--logs_root', str(out / 'logs'),
            '--samples_root', str(out / 'samples')]


def fake_inception(calls):
    """prepare_metrics' stand-in: the next of METRICS at each test."""
    def prepare(*args, **kwargs):
        def measure(sample, num, num_splits=10, prints=True):
            IS, IS_std, FID, KID, KID_std = METRICS[len(calls)]
            calls.append(num)
            return {'IS_mean': IS, 'IS_std': IS_std, 'FID': FID, 'KID_mean': KID,
                    'KID_std': KID_std}
        return measure
    return prepare


@pytest.fixture
def demo_run(data_root, shared_run):
    """The demo's flags for 6 iterations: tests (fake Inception) and saves at 3 and 6, singular
    values every 2, --tensorboard. Returns (out, {itr: the step's losses}). Its own run: what
    these tests read (the demo's rates and batch, tests, TensorBoard's events) the session's
    tiny_run has none of. Read-only: tests that write copy it first."""
    def build(out):
        losses, calls = {}, []
        real = train_fns.GAN_training_function

        def recording(G, D, GD, z_, y_, ema, state_dict, config, precision=None, **kwargs):
            step = real(G, D, GD, z_, y_, ema, state_dict, config, precision, **kwargs)

            def train_step(x, y):
                losses[state_dict['itr']] = step(x, y)
                return losses[state_dict['itr']]
            return train_step
        flags = demo_flags(EXPERIMENT=NAME, TOTAL_ITRS='6', SAVE_EVERY='3') + roots(out) + [
            '--data_root', data_root, '--device', 'cpu', '--test_every', '3',
            '--sv_log_interval', '2', '--tensorboard']
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train_fns, 'GAN_training_function', recording)
            mp.setattr(inception_utils, 'prepare_metrics', fake_inception(calls))
            train.run(vars(utils.prepare_parser().parse_args(flags)))
        assert len(calls) == 2
        # Floats survive JSON exactly (repr round-trips), so every worker reads these losses.
        (out / 'losses.json').write_text(json.dumps(losses))
    out = shared_run('demo', build)
    losses = json.loads((out / 'losses.json').read_text())
    return out, {int(itr): values for itr, values in losses.items()}


def copied(out, tmp_path):
    """A copy of the demo run to write into."""
    shutil.copytree(out, tmp_path / 'demo')
    return tmp_path / 'demo'


def sv_names(out):
    """utils.get_SVs' names for the demo's saved G and D."""
    names = []
    for net in 'GD':
        sd = utils.torch_load(str(out / 'weights' / NAME / (net + '.pth')))
        names += [(f'{net}_{k}').replace('.', '_') for k in sd if 'sv' in k]
    return names


# ----------------------------------------------------------------------------
# plot_logs.py on a run of the demo config.

def test_demo_run_plots(demo_run, tmp_path):
    """Every figure of a demo-config run is written, at its pixel size, beside the logs (the
    tests logged KID: metrics.png has its one panel)."""
    out = copied(demo_run[0], tmp_path)
    paths = plot_logs.run(vars(plot_logs.prepare_parser().parse_args(
        ['--experiment_name', NAME, '--logs_root', str(out / 'logs')])))
    folder = out / 'logs' / NAME
    sizes = {**SIZES, 'metrics.png': (400, 450)}
    assert sorted(paths) == sorted(str(folder / name) for name in sizes)
    for name, size in sizes.items():
        with Image.open(folder / name) as im:
            assert im.format == 'PNG' and im.size == size, name


def test_demo_run_parsed_series(demo_run):
    """The series plot_logs reads are the run's: losses as train() returned them (to the
    %3.3e the logs keep), tests as the metrics returned, SVs of every SN layer every 2."""
    out, losses = demo_run
    run = plot_logs.read_experiment(str(out / 'logs'), NAME)
    for metric in ['G_loss', 'D_loss_real', 'D_loss_fake']:
        itr, values = run['metrics'][metric]
        assert itr.tolist() == [1, 2, 3, 4, 5, 6]
        assert values == pytest.approx([losses[i][metric] for i in range(1, 7)], rel=1e-3)
    tests = run['tests']
    assert tests['itr'].tolist() == [3, 6]
    for k, key in enumerate(['IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std']):
        assert tests[key].tolist() == [m[k] for m in METRICS]
    names = sv_names(out)
    assert len(names) > 10
    assert sorted(plot_logs.sv_names(run, 'G') + plot_logs.sv_names(run, 'D')) == sorted(names)
    for name in names:
        assert run['metrics'][name][0].tolist() == [2, 4, 6]
        assert np.all(run['metrics'][name][1] > 0)


# ----------------------------------------------------------------------------
# --tensorboard.

def event_reader(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={'scalars': 0, 'images': 0})
    events.Reload()
    return events


def scalars(events, tag):
    """{step: value} of a scalar tag."""
    return {e.step: e.value for e in events.Scalars(tag)}


def test_tensorboard_mirrors_the_logs(demo_run):
    """The event file holds the .log losses and SVs, the .jsonl metrics, learning rates,
    images/s and the saved sheets' JPEGs, at their iterations."""
    out, losses = demo_run
    events = event_reader(out / 'logs' / NAME / 'tb')
    run = plot_logs.read_experiment(str(out / 'logs'), NAME)
    for metric in ['G_loss', 'D_loss_real', 'D_loss_fake']:
        logged = scalars(events, 'train/' + metric)
        assert sorted(logged) == [1, 2, 3, 4, 5, 6]
        assert [logged[i] for i in range(1, 7)] == pytest.approx(
            [losses[i][metric] for i in range(1, 7)], rel=1e-6)
        assert [logged[i] for i in range(1, 7)] == pytest.approx(
            run['metrics'][metric][1], rel=1e-3)  # %3.3e
    names = sv_names(out)
    assert sorted(t[3:] for t in events.Tags()['scalars'] if t.startswith('sv/')) == sorted(names)
    for name in names:
        logged = scalars(events, 'sv/' + name)
        assert sorted(logged) == [2, 4, 6]
        assert [logged[i] for i in (2, 4, 6)] == pytest.approx(run['metrics'][name][1], rel=1e-3)
    with open(out / 'logs' / (NAME + '_log.jsonl')) as f:
        records = [json.loads(line) for line in f]
    for key in ['IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std']:
        assert scalars(events, 'test/' + key) == pytest.approx(
            {r['itr']: r[key] for r in records}, rel=1e-6)
    assert scalars(events, 'lr/G') == pytest.approx({i: 5e-4 for i in range(1, 7)})
    assert scalars(events, 'lr/D') == pytest.approx({i: 5e-4 for i in range(1, 7)})
    # images/s: the demo's batch per iteration over the time between the iterations' events.
    flags = demo_flags()
    batch = int(flags[flags.index('--batch_size') + 1])
    speed = scalars(events, 'speed/images_per_s')
    walls = {e.step: e.wall_time for e in events.Scalars('train/G_loss')}
    assert speed == pytest.approx({i: batch / (walls[i] - walls[i - 1]) for i in range(2, 7)},
                                  rel=1e-5)
    folder = out / 'samples' / NAME
    for tag, path in [('samples/fixed', 'fixed_samples%d.jpg'), ('samples/classes0',
                                                                  '%d/samples0.jpg')]:
        images = events.Images(tag)
        assert [im.step for im in images] == [3, 6]
        for im in images:
            data = (folder / (path % im.step)).read_bytes()
            assert im.encoded_image_string == data
            with Image.open(folder / (path % im.step)) as jpeg:
                assert (im.width, im.height) == jpeg.size


def test_tensorboard_missing_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    """Without the tensorboard package --tensorboard stops at once: one line, exit 2, the old
    logs untouched."""
    for name in list(sys.modules):
        if name == 'tensorboard' or name.startswith('tensorboard.'):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, 'tensorboard', None)
    old = tmp_path / 'logs' / NAME / 'G_loss.log'
    old.parent.mkdir(parents=True)
    old.write_text('1: 1.000e+00\n')
    flags = demo_flags(EXPERIMENT=NAME, TOTAL_ITRS='2') + roots(tmp_path) + [
        '--data_root', data_root, '--device', 'cpu', '--tensorboard']
    with pytest.raises(SystemExit) as e:
        utils.run_cli(train.run, utils.prepare_parser(), flags)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: --tensorboard needs the tensorboard package: pip install tensorboard']
    assert old.read_text() == '1: 1.000e+00\n'
    assert not (tmp_path / 'weights' / NAME).exists() or not os.listdir(tmp_path / 'weights'
                                                                        / NAME)


def test_tensorboard_killed_run_keeps_what_was_saved(data_root, tmp_path):
    """SIGKILL after the save at 3: the event file holds iterations 1-3 as the .log has them."""
    flags = demo_flags(EXPERIMENT=NAME, TOTAL_ITRS='1000', SAVE_EVERY='3') + roots(tmp_path) + [
        '--data_root', data_root, '--device', 'cpu', '--tensorboard']
    log = tmp_path / 'logs' / NAME / 'G_loss.log'
    proc = subprocess.Popen([sys.executable, 'train.py'] + flags, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        # Two iterations past the save, so its flush (and sheets) are long done.
        while not (log.exists() and len(log.read_text().splitlines()) >= 5):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, 'no 5 iterations in 240 s'
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    events = event_reader(tmp_path / 'logs' / NAME / 'tb')
    logged = scalars(events, 'train/G_loss')
    itr, values = plot_logs.read_metric_log(str(log))
    assert {1, 2, 3} <= set(logged)
    assert [logged[i] for i in (1, 2, 3)] == pytest.approx(values[:3], rel=1e-3)
    assert [im.step for im in events.Images('samples/fixed')] == [3]


def test_tensorboard_flushes_at_each_save(data_root, tmp_path, monkeypatch):
    """With a writer that holds events until flush (as TensorFlow's buffered files do), a run
    that dies at iteration 5 has iterations 1-3 and the sheets of the save at 3 on disk."""
    event_pb2, summary_pb2, EventFileWriter = utils.tensorboard_modules()

    class BufferedWriter(EventFileWriter):
        def __init__(self, logdir):
            self.pending = []
            super().__init__(logdir)

        def add_event(self, event):
            self.pending.append(event)

        def flush(self):
            for event in self.pending:
                super().add_event(event)
            self.pending = []
            super().flush()
    monkeypatch.setattr(utils, 'tensorboard_modules',
                        lambda: (event_pb2, summary_pb2, BufferedWriter))
    real = train_fns.GAN_training_function

    def dies_at_5(G, D, GD, z_, y_, ema, state_dict, config, precision=None, **kwargs):
        step = real(G, D, GD, z_, y_, ema, state_dict, config, precision, **kwargs)

        def train_step(x, y):
            if state_dict['itr'] == 5:
                raise RuntimeError('killed')
            return step(x, y)
        return train_step
    monkeypatch.setattr(train_fns, 'GAN_training_function', dies_at_5)
    flags = demo_flags(EXPERIMENT=NAME, TOTAL_ITRS='10', SAVE_EVERY='3') + roots(tmp_path) + [
        '--data_root', data_root, '--device', 'cpu', '--tensorboard']
    with pytest.raises(RuntimeError, match='killed'):
        train.run(vars(utils.prepare_parser().parse_args(flags)))
    events = event_reader(tmp_path / 'logs' / NAME / 'tb')
    assert sorted(scalars(events, 'train/G_loss')) == [1, 2, 3]
    assert [im.step for im in events.Images('samples/fixed')] == [3]


# ----------------------------------------------------------------------------
# plot_logs.py on the release's formats.

def write_release_logs(logs_root, name, logstyle='%3.3e', n=12, tests=4, half_lines=True):
    """Logs as the release wrote them: losses every iteration and two SVs every 2 in
    logstyle, a test every 3 iterations in the jsonl; each file ends in a half-written line.
    Returns {file stem: (itr, values)} of the complete lines."""
    rng = np.random.default_rng(len(name))
    folder = os.path.join(logs_root, name)
    os.makedirs(folder, exist_ok=True)
    series = {}
    for metric, every in [('G_loss', 1), ('D_loss_real', 1), ('D_loss_fake', 1),
                          ('G_blocks_0_0_conv1_sv0', 2), ('D_linear_sv0', 2)]:
        itr = np.arange(every, n + 1, every)
        values = rng.uniform(0.05, 3.0, len(itr))
        with open(os.path.join(folder, metric + '.log'), 'w') as f:
            f.writelines(f'{i}: {logstyle % v}\n' for i, v in zip(itr, values))
            if half_lines:
                f.write(f'{n + 1}: 1.2')
        series[metric] = (itr, np.array([float(logstyle % v) for v in values]))
    records = [{'itr': 3 * (k + 1), 'IS_mean': float(rng.uniform(1, 10)),
                'IS_std': float(rng.uniform(0, 1)), 'FID': float(rng.uniform(10, 300)),
                '_stamp': 1.5e9 + 600.0 * (k + 1) + (k > 1) * 60.0} for k in range(tests)]
    with open(os.path.join(logs_root, name + '_log.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
        if half_lines:
            f.write(f'{{"itr": {3 * (tests + 1)}, "IS_mean": 9')
    series['tests'] = {k: np.array([r[k] for r in records]) for k in records[0]}
    return series


@pytest.mark.parametrize('logstyle', ['%3.3e', '%3.3f', '%.8g', '%10.4E', '%s', '%d'])
def test_reads_release_formats(tmp_path, logstyle):
    """Each logstyle's lines read back as the numbers they print; the half line is left out."""
    expected = write_release_logs(str(tmp_path), 'run', logstyle)
    run = plot_logs.read_experiment(str(tmp_path), 'run')
    tests = expected.pop('tests')
    assert run['tests'].keys() == tests.keys()
    for k in tests:
        assert run['tests'][k].tolist() == tests[k].tolist()
    assert run['metrics'].keys() == expected.keys()
    for metric, (itr, values) in expected.items():
        assert run['metrics'][metric][0].tolist() == itr.tolist()
        assert run['metrics'][metric][1].tolist() == values.tolist()


def test_resumed_run_keeps_the_later_lines(tmp_path):
    """Lines a resumed run logged again replace the interrupted run's for those iterations."""
    path = tmp_path / 'G_loss.log'
    path.write_text(''.join(f'{i}: {i:3.3e}\n' for i in range(1, 11))
                    + ''.join(f'{i}: {-i:3.3e}\n' for i in range(6, 13)))
    itr, values = plot_logs.read_metric_log(str(path))
    assert itr.tolist() == list(range(1, 13))
    assert values.tolist() == [1, 2, 3, 4, 5, -6, -7, -8, -9, -10, -11, -12]
    assert plot_logs.latest(np.array([1, 2, 3, 2, 3, 1, 2])).tolist() == [
        False, False, False, False, False, True, True]


def test_plotted_data_is_the_logs(tmp_path):
    """The lines drawn are the parsed series; the smoothed line is the trailing mean over the
    window; the best IS and FID are marked; SVs are one line each on a log axis."""
    expected = write_release_logs(str(tmp_path), 'run', '%3.3e', n=30)
    run = plot_logs.read_experiment(str(tmp_path), 'run')
    window = 4
    fig = plot_logs.figure_losses(run, window)
    g_lines, d_lines = fig.axes[0].lines, fig.axes[1].lines
    assert len(g_lines) == 2 and len(d_lines) == 4
    for line, metric in [(g_lines[0], 'G_loss'), (d_lines[0], 'D_loss_real'),
                         (d_lines[2], 'D_loss_fake')]:
        itr, values = expected[metric]
        assert line.get_xdata().tolist() == itr.tolist()
        assert line.get_ydata().tolist() == values.tolist()
    itr, values = expected['G_loss']
    means = [np.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]
    assert g_lines[1].get_ydata() == pytest.approx(means, rel=1e-12)

    fig = plot_logs.figure_IS_FID(run)
    tests = expected['tests']
    for ax, key, best in [(fig.axes[0], 'IS_mean', np.argmax), (fig.axes[1], 'FID', np.argmin)]:
        assert ax.lines[0].get_xdata().tolist() == tests['itr'].tolist()
        assert ax.lines[0].get_ydata().tolist() == tests[key].tolist()
        b = best(tests[key])
        assert ax.lines[1].get_xdata().tolist() == [tests['itr'][b]]
        assert ax.lines[1].get_ydata().tolist() == [tests[key][b]]
        # Iterations print as integers, as the logs hold them ('at itr 136000', not '136000.0').
        assert ax.lines[1].get_label().endswith(f' at itr {int(tests["itr"][b])}')

    for net, metric in [('G', 'G_blocks_0_0_conv1_sv0'), ('D', 'D_linear_sv0')]:
        ax = plot_logs.figure_svs(run, net).axes[0]
        assert ax.get_yscale() == 'log' and len(ax.lines) == 1
        assert ax.lines[0].get_ydata().tolist() == expected[metric][1].tolist()
    plot_logs.pyplot().close('all')


def test_time_axis_is_hours_since_start(tmp_path):
    """--x time: hours from _stamp, the start extrapolated at the first two tests' pace
    (tests every 600 s from 1.5e9 + 600, the third 60 s late: start at 1.5e9)."""
    write_release_logs(str(tmp_path), 'run')
    run = plot_logs.read_experiment(str(tmp_path), 'run')
    expected = [1 / 6, 2 / 6, 3 / 6 + 1 / 60, 4 / 6 + 1 / 60]
    assert plot_logs.hours(run['tests']) == pytest.approx(expected, rel=1e-9)
    fig = plot_logs.figure_IS_FID(run, x='time')
    assert fig.axes[0].lines[0].get_xdata() == pytest.approx(expected, rel=1e-9)
    assert 'hours' in fig.axes[0].get_xlabel()
    plot_logs.pyplot().close('all')


def test_compares_experiments_named_and_globbed(tmp_path):
    """Names and patterns select experiments (each once); each gets its own figures and all
    share one IS/FID comparison, one line per experiment in order."""
    for name in ['run_a', 'run_b', 'other']:
        write_release_logs(str(tmp_path), name)
    (tmp_path / 'unrelated').mkdir()
    config = vars(plot_logs.prepare_parser().parse_args(
        ['--experiment_name', 'other', 'run_*', 'run_a', '--logs_root', str(tmp_path),
         '--x', 'time']))
    paths = plot_logs.run(config)
    assert paths[-1] == str(tmp_path / 'compare_IS_FID.png')
    with Image.open(paths[-1]) as im:
        assert im.size == (1200, 600)
    for name in ['run_a', 'run_b', 'other']:
        for figure in SIZES:
            assert str(tmp_path / name / figure) in paths
    assert len(paths) == 3 * 4 + 1
    runs = [plot_logs.read_experiment(str(tmp_path), n) for n in ['other', 'run_a', 'run_b']]
    fig = plot_logs.figure_compare(runs)
    assert [line.get_label() for line in fig.axes[1].lines] == ['other', 'run_a', 'run_b']
    for line, r in zip(fig.axes[1].lines, runs):
        assert line.get_ydata().tolist() == r['tests']['FID'].tolist()
    plot_logs.pyplot().close('all')


def test_plot_logs_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    """Unknown experiments, a missing logs_root and a missing matplotlib: one stderr line
    each, exit 2, no figure."""
    write_release_logs(str(tmp_path), 'run')
    proc = subprocess.run([sys.executable, 'plot_logs.py', '--logs_root', str(tmp_path),
                           '--experiment_name', 'nope'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f'error: no logs of nope in {tmp_path} (looked for '
                                        f'nope/ with .log files and nope_log.jsonl)']
    cases = [(['--experiment_name', 'run', 'x*'], 'no logs of x* in'),
             (['--experiment_name', 'run', '--logs_root', str(tmp_path / 'no')],
              'no logs_root folder')]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            plot_logs.main(['--logs_root', str(tmp_path)] + args)
        err = capsys.readouterr().err.splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    with pytest.raises(SystemExit) as e:
        plot_logs.main(['--experiment_name', 'run', '--logs_root', str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        'error: plot_logs.py needs matplotlib: pip install matplotlib']
    assert not (tmp_path / 'run' / 'losses.png').exists()


# ----------------------------------------------------------------------------
# scripts/utils/duplicate.sh.

def duplicate(cwd, *args):
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'utils', 'duplicate.sh'),
                           *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr.splitlines()


def tree(folder):
    """{relative path: bytes} of every file under folder."""
    out = {}
    for base, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(base, f)
            with open(path, 'rb') as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


def test_duplicate_copies_weights_logs_and_jsonl(demo_run, tmp_path):
    """A copy of the demo run under a new name: the same weights, logs and jsonl, and train.py
    resumes it."""
    out = copied(demo_run[0], tmp_path)
    code, err = duplicate(out, NAME, 'copy')
    assert code == 0, err
    for src, dst in [('weights/' + NAME, 'weights/copy'), ('logs/' + NAME, 'logs/copy'),
                     (f'logs/{NAME}_log.jsonl', 'logs/copy_log.jsonl')]:
        if os.path.isdir(out / src):
            assert tree(out / src) == tree(out / dst) and tree(out / src)
        else:
            assert (out / src).read_bytes() == (out / dst).read_bytes()
    state = utils.torch_load(str(out / 'weights' / 'copy' / 'state_dict.pth'))
    assert state['itr'] == 6
    G = utils.torch_load(str(out / 'weights' / 'copy' / 'G.pth'))
    assert all(torch.equal(G[k], v) for k, v in utils.torch_load(
        str(out / 'weights' / NAME / 'G.pth')).items())


def test_duplicate_resumes_with_tensorboard(demo_run, data_root, tmp_path):
    """The copy resumes to 8 under its new name: its logs and event files continue the
    original's, the new event file starting with the session start that makes TensorBoard
    drop older events from iteration 7 on."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    out = copied(demo_run[0], tmp_path)
    assert duplicate(out, NAME, 'resumed')[0] == 0
    flags = demo_flags(EXPERIMENT='resumed', TOTAL_ITRS='8') + roots(out) + [
        '--data_root', data_root, '--device', 'cpu', '--tensorboard', '--resume']
    assert train.run(vars(utils.prepare_parser().parse_args(flags)))['itr'] == 8
    itr, _ = plot_logs.read_metric_log(str(out / 'logs' / 'resumed' / 'G_loss.log'))
    assert itr.tolist() == list(range(1, 9))
    tb = out / 'logs' / 'resumed' / 'tb'
    files = sorted(os.listdir(tb))
    assert len(files) == 2
    assert sorted(scalars(event_reader(tb), 'train/G_loss')) == list(range(1, 9))
    first = [e for e in EventFileLoader(str(tb / files[1])).Load() if not e.file_version][0]
    assert first.step == 7 and first.session_log.status == first.session_log.START


def test_duplicate_roots_and_refusals(tmp_path):
    """--weights_root/--logs_root pick the folders; a missing source or an existing target is
    refused with one line, exit 2 and nothing changed."""
    (tmp_path / 'w' / 'a').mkdir(parents=True)
    (tmp_path / 'w' / 'a' / 'G.pth').write_bytes(b'g')
    (tmp_path / 'l' / 'a').mkdir(parents=True)
    (tmp_path / 'l' / 'a' / 'G_loss.log').write_text('1: 1.0\n')
    code, err = duplicate(tmp_path, 'a', 'b', '--weights_root', 'w', '--logs_root=l')
    assert code == 0, err
    assert (tmp_path / 'w' / 'b' / 'G.pth').read_bytes() == b'g'
    assert (tmp_path / 'l' / 'b' / 'G_loss.log').read_text() == '1: 1.0\n'
    assert not (tmp_path / 'l' / 'b_log.jsonl').exists()  # a run without tests has none
    before = tree(tmp_path)
    for args, message in [(['a', 'b', '--weights_root', 'w', '--logs_root', 'l'],
                           'w/b already exists'),
                          (['zz', 'c', '--weights_root', 'w', '--logs_root', 'l'],
                           'no weights folder w/zz/'),
                          (['a', 'c'], 'no weights folder weights/a/'),
                          (['a'], 'give SOURCE and TARGET'),
                          (['a', 'x/y', '--weights_root', 'w'], 'not an experiment name'),
                          # An empty root made the paths absolute: `tmp` was /tmp (round 13).
                          (['tmp', 'c', '--weights_root=', '--logs_root=l'],
                           '--weights_root is empty'),
                          (['tmp', 'c', '--weights_root', 'w', '--logs_root', ''],
                           '--logs_root is empty')]:
        code, err = duplicate(tmp_path, *args)
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
    (tmp_path / 'l' / 'c_log.jsonl').write_text('{}\n')
    code, err = duplicate(tmp_path, 'a', 'c', '--weights_root', 'w', '--logs_root', 'l')
    assert code == 2 and len(err) == 1 and 'l/c_log.jsonl already exists' in err[0]
    assert not (tmp_path / 'w' / 'c').exists()
    (tmp_path / 'l' / 'c_log.jsonl').unlink()
    assert tree(tmp_path) == before



@pytest.mark.parametrize('names', [['no\nsuch', 'b'], ['a', 'b\nc'], ['a', '\x1b[2Jx'],
                                   ['a\x7f', 'b']])
def test_duplicate_refuses_names_train_py_refuses(tmp_path, names):
    """A name holding a control character (train.py's files.check_name refuses it) was copied
    to, or named over two lines when missing (round 14): one line, nothing created."""
    (tmp_path / 'weights' / 'a').mkdir(parents=True)
    before = sorted(os.listdir(tmp_path / 'weights'))
    code, err = duplicate(tmp_path, *names)
    assert code == 2 and len(err) == 1 and 'is not an experiment name' in err[0], err
    assert sorted(os.listdir(tmp_path / 'weights')) == before
    assert not (tmp_path / 'logs').exists()


def test_duplicate_writes_through_no_link_planted_at_a_temp_name(tmp_path):
    """Links planted at every name `TARGET.tmp<pid>` could take (the copy's temp name) carried
    the copy outside the roots and left TARGET a link there (round 14): the copy goes to a folder
    the script creates itself."""
    outside = tmp_path / 'outside'
    outside.mkdir()
    (tmp_path / 'weights' / 'a').mkdir(parents=True)
    (tmp_path / 'weights' / 'a' / 'G.pth').write_bytes(b'g')
    limit = int(open('/proc/sys/kernel/pid_max').read()) if os.path.exists(
        '/proc/sys/kernel/pid_max') else 32768
    for pid in range(max(os.getpid() - 500, 1), min(os.getpid() + 3000, limit)):
        os.symlink(outside, tmp_path / 'weights' / f'u.tmp{pid}')
    code, err = duplicate(tmp_path, 'a', 'u')
    assert code == 0, err
    assert os.listdir(outside) == []
    target = tmp_path / 'weights' / 'u'
    assert not target.is_symlink() and (target / 'G.pth').read_bytes() == b'g'


def test_duplicate_past_the_file_size_limit_is_one_line_and_leaves_no_target(tmp_path):
    """Past `ulimit -f` cp was killed by SIGXFSZ: status 153 and bash's line (round 14). Now
    cp's error is one line, exit 2, and the weights copied before the failing logs copy are
    removed too (all or nothing)."""
    (tmp_path / 'weights' / 'a').mkdir(parents=True)
    (tmp_path / 'weights' / 'a' / 'G.pth').write_bytes(b'g' * 1000)
    (tmp_path / 'logs' / 'a').mkdir(parents=True)
    (tmp_path / 'logs' / 'a' / 'G_loss.log').write_bytes(b'1: 1.0\n' * 20000)  # 140 KB
    proc = subprocess.run(['bash', '-c', 'ulimit -f 20; exec bash "$0" a b',
                           os.path.join(ROOT, 'scripts', 'utils', 'duplicate.sh')],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    err = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(err) == 1, (proc.returncode, err)
    assert 'could not copy logs/a to logs/b' in err[0] and 'File too large' in err[0]
    assert sorted(os.listdir(tmp_path / 'weights')) == ['a']
    assert sorted(os.listdir(tmp_path / 'logs')) == ['a']

def test_test_results_no_metric_can_give_are_left_out(tmp_path, capsys):
    """A jsonl FID below 0 or an IS of inf (a damaged log; train.py never logs one) is left
    out of the figures with a note, not drawn or starred as the best; the record's other
    values stay."""
    import json
    os.makedirs(tmp_path / 'run')
    records = [{'itr': 100, 'IS_mean': 2.0, 'IS_std': 0.1, 'FID': 50.0},
               {'itr': 200, 'IS_mean': float('inf'), 'IS_std': 0.1, 'FID': -20.0},
               {'itr': 300, 'IS_mean': 3.0, 'IS_std': 0.1, 'FID': 40.0, 'precision': 1.5}]
    with open(tmp_path / 'run_log.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    tests = plot_logs.read_jsonl(str(tmp_path / 'run_log.jsonl'))
    assert 'left out 3 values no test can give' in capsys.readouterr().out
    assert tests['itr'].tolist() == [100, 200, 300]
    assert np.isnan(tests['IS_mean'][1]) and np.isnan(tests['FID'][1])
    assert np.isnan(tests['precision']).all() and tests['IS_std'].tolist() == [0.1] * 3
    fig = plot_logs.figure_IS_FID({'name': 'run', 'tests': tests})
    assert fig.axes[1].lines[1].get_label() == 'best 40 at itr 300'
    plot_logs.pyplot().close('all')
