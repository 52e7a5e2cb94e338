"""The collapse watch (collapse.py): the rule on hand-made windows, recorded runs replayed
(tests/fixtures/collapse), and --collapse_watch in train.py with a stand-in step: warn (the
line and the jsonl record, found again by the offline scan), stop (exit status 3), rollback
(the healthy set reloaded bit for bit, both learning rates scaled and kept by a relaunch)."""
import json
import math
import os

import numpy as np
import pytest
import torch

import checkpoints
import collapse
import plot_logs
import step_helpers
import train
import train_fns
import utils
from helpers import FIXTURES, ROOT, TINY_FLAGS, assert_same, run_flags, tiny_config

NAME = 'watched'
RULE = {'every': 10, 'window': 200, 'persist': 10, 'healthy_after': 300}


def healthy_losses(rng):
    """One iteration's hinge losses of a balanced game."""
    return {'G_loss': 0.8 + 0.5 * rng.standard_normal(),
            'D_loss_real': 0.7 + 0.2 * abs(rng.standard_normal()),
            'D_loss_fake': 0.7 + 0.2 * abs(rng.standard_normal())}


def d_wins_losses(rng):
    """One iteration's losses once D wins: its losses near 0, G's far above 3."""
    return {'G_loss': 6.0 + rng.standard_normal(),
            'D_loss_real': 0.02 * abs(rng.standard_normal()),
            'D_loss_fake': 0.02 * abs(rng.standard_normal())}


def feed(detector, series, start=1):
    """Feed {itr: losses} from start on to detector, judging as train.py does; returns the
    Collapses it confirmed."""
    found = []
    for itr in range(start, max(series) + 1):
        detector.losses(itr, series[itr])
        if itr % collapse.EVERY == 0:
            c = detector.judge(itr)
            if c is not None:
                found.append(c)
    return found


def synthetic(n, bad=(), seed=0):
    """{itr: losses} for itr 1..n, D winning at the iterations in bad."""
    rng = np.random.default_rng(seed)
    bad = set(bad)
    return {i: (d_wins_losses if i in bad else healthy_losses)(rng) for i in range(1, n + 1)}


# ----------------------------------------------------------------------------
# The rule itself.

def test_rule_constants_are_the_documented_ones():
    """The frozen rule is what docs/collapse.md states."""
    assert (collapse.EVERY, collapse.WINDOW, collapse.PERSIST, collapse.HEALTHY_AFTER) == (
        RULE['every'], RULE['window'], RULE['persist'], RULE['healthy_after'])
    with open(os.path.join(ROOT, 'docs', 'collapse.md')) as f:
        doc = f.read()
    for name in ('EVERY', 'WINDOW', 'MIN_POINTS', 'D_WINS_LOSS', 'D_WINS_G_LOSS',
                 'FROZEN_SPREAD', 'SV_RATIO', 'SV_LOOKBACK', 'SV_BASE_AFTER', 'FID_RATIO',
                 'PERSIST',
                 'HEALTHY_AFTER'):
        assert f'`{name}` = {getattr(collapse, name):g}' in doc, name


def test_judge_signals_on_hand_made_windows():
    """Each signal fires exactly on its condition (medians, spreads, ratios computed here)."""
    n = collapse.MIN_POINTS
    G, low = np.linspace(3.5, 4.5, n), np.linspace(0.01, 0.03, n)  # medians 4 and 0.02
    wins = collapse.judge({'G_loss': G, 'D_loss_real': low, 'D_loss_fake': low}, {}, {}, [])
    assert list(wins) == ['D wins'] and wins['D wins'].startswith('median D loss 0.04 <')
    # A median D loss of 0.12 is not below 0.1; a median G loss of 0.95 is not above 1.
    assert not collapse.judge({'G_loss': G, 'D_loss_real': low + 0.04,
                               'D_loss_fake': low + 0.04}, {}, {}, [])
    assert not collapse.judge({'G_loss': G - 3.05, 'D_loss_real': low,
                               'D_loss_fake': low}, {}, {}, [])
    # Too few points: not judged.
    assert not collapse.judge({'G_loss': G[:n - 1], 'D_loss_real': low[:n - 1],
                               'D_loss_fake': low[:n - 1]}, {}, {}, [])
    # Frozen: G's and D's fake losses barely move (their median absolute deviation, 1/4 of a
    # linspace's range, below 0.001), whatever the real loss does and despite a few outliers.
    flat = {'G_loss': np.where(np.arange(n) % 10 == 0, 2.0, -0.094),
            'D_loss_real': np.linspace(0.0, 2.0, n), 'D_loss_fake': np.linspace(1.09, 1.0935, n)}
    assert list(collapse.judge(flat, {}, {}, [])) == ['losses frozen']
    flat['D_loss_fake'] = np.linspace(1.09, 1.0945, n)
    assert not collapse.judge(flat, {}, {}, [])
    svs = {'G_a_sv0': np.array([3.0, 3.2, 3.1]), 'D_b_sv0': np.array([9.0, 9.5, 9.2])}
    fired = collapse.judge({}, svs, {'G_a_sv0': 1.0, 'D_b_sv0': 3.0}, [])
    assert list(fired) == ['sv0 explode'] and 'G_a_sv0 3.1x' in fired['sv0 explode']
    assert not collapse.judge({}, svs, {'G_a_sv0': 1.1, 'D_b_sv0': 3.1}, [])
    tests = [(1, 50.0), (2, 40.0), (3, 81.0), (4, 90.0)]
    assert list(collapse.judge({}, {}, {}, tests)) == ['FID worse']
    assert not collapse.judge({}, {}, {}, tests[:3] + [(4, 79.0)])


def test_spikes_that_recover_raise_nothing():
    """D winning for 90 iterations (under half the window: no median flips) raises nothing, nor
    do 30-iteration bursts every 100; 400 iterations of it do, confirmed 9 judgements after
    its onset."""
    assert feed(collapse.Detector(), synthetic(1500, range(600, 690))) == []
    bursts = [i for i in range(300, 1500) if i % 100 < 30]
    assert feed(collapse.Detector(), synthetic(1500, bursts)) == []
    found = feed(collapse.Detector(), synthetic(1500, range(600, 1000)))
    assert len(found) == 1
    onset, itr = found[0].onset, found[0].itr
    assert list(found[0].signals) == ['D wins']
    # The median flips once most of the window is bad: past 600 + WINDOW / 2.
    assert 600 + collapse.WINDOW // 2 <= onset <= 600 + collapse.WINDOW // 2 + 20
    assert itr == onset + (collapse.PERSIST - 1) * collapse.EVERY


def test_checkpoints_become_healthy_only_after_clean_iterations():
    """A candidate saved at 100 is healthy at the first clean judgement 300 iterations on (400),
    the next one saved then (500) at 800; one saved as D starts winning (at 850) is discarded
    by the signals at 950, and the collapse names 500 as the last healthy checkpoint."""
    detector = collapse.Detector()
    series = synthetic(1200, range(850, 1200))
    for itr in range(1, 1201):
        detector.losses(itr, series[itr])
        if itr % 100 == 0:
            detector.saved(itr)
        if itr % collapse.EVERY == 0:
            detector.judge(itr)
    assert detector.events == [('candidate', 100), ('healthy', 100), ('candidate', 500),
                               ('healthy', 500), ('candidate', 900), ('discarded', 900)]
    assert detector.healthy == 500 and detector.collapses[0].healthy == 500
    assert detector.collapses[0].onset == 950


# ----------------------------------------------------------------------------
# Recorded runs (tests/fixtures/collapse: the .log files of real runs, docs/collapse.md).

def recorded():
    with open(os.path.join(FIXTURES, 'collapse', 'runs.json')) as f:
        return json.load(f)


@pytest.mark.parametrize('name', sorted(recorded()))
def test_recorded_runs(name, capsys):
    """Each recorded run's verdict with the frozen rule: collapses are found at their recorded
    onset, which lies between the last sheet that looked healthy and the first that showed the
    collapse; healthy runs (held-out ones included) raise nothing, and so does the one collapse
    the rule misses (heldout_collapse_lr5e-3: every sample a ring, losses balanced). Through
    plot_logs.py --collapse's report."""
    expected = recorded()[name]
    plot_logs.report_collapse(plot_logs.read_experiment(
        os.path.join(FIXTURES, 'collapse'), name), os.path.join(FIXTURES, 'collapse'))
    out = capsys.readouterr().out
    if expected['onset'] is None:
        assert out == f'{name}: no collapse found\n'
        return
    first = out.splitlines()[0]
    assert first.startswith(f"collapse at itr {expected['onset']}: "), first
    assert expected['healthy_sheet'] < expected['onset'] <= expected['collapsed_sheet']
    for signal in expected['signals']:
        assert signal in first


# ----------------------------------------------------------------------------
# train.py --collapse_watch, with a stand-in step.

def stand_in(losses_at, seen, seed=0):
    """GAN_training_function's stand-in: every 50th step moves the training state (G's and D's
    weights and Adam states by one optimizer step on random gradients drawn from seed, G_ema
    by one EMA update, the LeCam anchors under --LC, the fp16 loss scales under --amp fp16);
    each returns losses_at(itr, state_dict).

    seen['after_rollback'] gets that state (as states() lists it) as the first step after a
    rollback finds it; seen[itr] the state at each itr a checkpoint is saved at (every 100).
    """
    def make(G, D, GD, z_, y_, ema, state_dict, config, precision=None, ema_losses=None):
        gen = torch.Generator().manual_seed(seed)
        done = [0]
        if ema_losses is None:  # what the real step does
            ema_losses = step_helpers.lecam_anchors(config, state_dict)

        def states():
            out = {'G': G.state_dict(), 'D': D.state_dict(), 'G_optim': G.optim.state_dict(),
                   'D_optim': D.optim.state_dict()}
            if ema is not None:
                out['G_ema'] = ema.target.state_dict()
            if ema_losses is not None:
                out['anchors'] = ema_losses.state_dict()
            if precision is not None:
                out.update(precision.state_dict())  # 'amp' under fp16
            return torch_copy(out)

        def move(itr):
            for net in (G, D):
                for p in net.parameters():
                    p.grad = torch.randn(p.shape, generator=gen)
                net.optim.step()
            if ema is not None:
                ema.update(itr)
            if ema_losses is not None:
                for key in ('D_real', 'D_fake'):
                    ema_losses.update(float(torch.rand((), generator=gen)), key, itr)
                state_dict['ema_losses'] = ema_losses.state_dict()  # as losses.LeCam does
            if precision is not None and precision.G_scaler.is_enabled():
                for scaler in (precision.G_scaler, precision.D_scaler):
                    scaler.load_state_dict({**scaler.state_dict(),
                                            'scale': scaler.get_scale() / 2})
                precision.skipped['D'] += 1

        def step(x, y):
            itr = state_dict['itr']
            if state_dict.get('collapse', {}).get('rollbacks', 0) > done[0]:
                done[0] += 1
                seen['after_rollback'] = states()
            if itr % 50 == 0:
                move(itr)
            if itr % 100 == 0:
                seen[itr] = states()
            return losses_at(itr, state_dict)
        return step
    return make


def torch_copy(obj):
    """A deep copy of nested dicts/lists of tensors and values."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: torch_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(torch_copy(v) for v in obj)
    return obj


def watched_run(data_root, out, monkeypatch, losses_at, *extra, seen=None):
    """train.main with the tiny flags, the stand-in step and the sheets left out (they cost
    seconds a save here and the watch never reads them)."""
    step = stand_in(losses_at, {} if seen is None else seen)
    monkeypatch.setattr(train_fns, 'GAN_training_function', step)
    monkeypatch.setattr(utils, 'save_sheets', lambda *a, **k: None)
    monkeypatch.setattr(utils, 'save_image', lambda *a, **k: None)
    flags = run_flags(data_root, str(out), NAME, '--collapse_watch', *extra)
    train.main(flags)


def events(out):
    with open(os.path.join(out, 'logs', NAME + '_log.jsonl')) as f:
        return [json.loads(line) for line in f]


def synthetic_at(n, bad):
    series = synthetic(n, bad)
    return lambda itr, state_dict: series[itr]


def recorded_losses(name):
    """losses_at for the stand-in: a recorded run's logged losses, iteration by iteration."""
    run = plot_logs.read_experiment(os.path.join(FIXTURES, 'collapse'), name)
    series = {k: dict(zip(*run['metrics'][k])) for k in collapse.LOSSES}
    return lambda itr, state_dict: {k: series[k][itr] for k in collapse.LOSSES}


@pytest.mark.slow
def test_warn_line_record_and_offline_scan_agree(data_root, tmp_path, monkeypatch, capsys):
    """--on_collapse warn, the step replaying a recorded run's losses (D wins): one line naming
    the onset, signals and last healthy checkpoint, one jsonl record, the run goes on; the
    onset is the recorded run's, and plot_logs.py's scan of the new run's logs finds it too."""
    name = 'collapse_dlr1e-2_bs8'
    watched_run(data_root, tmp_path, monkeypatch, recorded_losses(name), '--total_itrs', '610',
                '--save_every', '0', '--on_collapse', 'warn', '--sv_log_interval', '0')
    lines = [line for line in capsys.readouterr().out.splitlines() if 'collapse at' in line]
    assert len(lines) == 1
    record, = events(tmp_path)
    assert record['event'] == 'collapse' and record['action'] == 'warn'
    onset = record['onset']
    assert onset == recorded()[name]['onset']
    assert lines[0].startswith(f'warning: collapse at itr {onset}: D wins (median D loss ')
    assert lines[0].endswith('last healthy checkpoint: none yet')
    assert record['itr'] == onset + 90 and list(record['signals']) == ['D wins']
    run = plot_logs.read_experiment(str(tmp_path / 'logs'), NAME)
    plot_logs.report_collapse(run, str(tmp_path / 'logs'))
    offline = capsys.readouterr().out.splitlines()
    assert offline[0] == f'collapse at itr {onset}: ' + collapse.signal_names(record['signals'])
    # The singular values the watch read every 10 iterations (--sv_log_interval 0 reads none)
    # are in the logs it judged.
    assert run['metrics']['G_linear_sv0'][0].tolist() == list(range(10, 611, 10))


@pytest.mark.slow
def test_stop_exits_3_with_the_line(data_root, tmp_path, monkeypatch, capsys):
    """--on_collapse stop: the line on stderr and exit status 3, no checkpoint after it."""
    with pytest.raises(SystemExit) as stopped:
        watched_run(data_root, tmp_path, monkeypatch, synthetic_at(300, range(1, 300)),
                    '--total_itrs', '300', '--save_every', '0', '--on_collapse', 'stop')
    assert stopped.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    record, = events(tmp_path)
    assert record['action'] == 'stop'
    assert err[-1].startswith(f"collapse at itr {record['onset']}: D wins")
    assert err[-1].endswith(f"(confirmed at itr {record['itr']}); last healthy checkpoint: "
                            'none yet')
    assert not os.path.exists(tmp_path / 'weights' / NAME / 'state_dict.pth')


def resumed(weights_root, suffix, *flags):
    """What a --resume from the set with suffix (None: the latest) starts from, as train.py
    builds it: the models, G_ema and optimizers loaded, the fp16 loss scales and the LeCam
    anchors restored; (that state as stand_in's states() lists it, the loaded state_dict)."""
    import BigGAN
    config = tiny_config('--ema', '--resume', *flags)
    torch.manual_seed(0)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    G_ema = BigGAN.Generator(**{**config, 'no_optim': True})
    state = {'config': config}
    checkpoints.load_weights(G, D, state, weights_root, NAME, suffix, G_ema)
    precision = step_helpers.Precision(config, 'cpu')
    if 'amp' in state:
        precision.load_state_dict(state['amp'])
    out = {'G': G.state_dict(), 'D': D.state_dict(), 'G_optim': G.optim.state_dict(),
           'D_optim': D.optim.state_dict(), 'G_ema': G_ema.state_dict(), **precision.state_dict()}
    anchors = step_helpers.lecam_anchors(config, state)
    if anchors is not None:
        out['anchors'] = anchors.state_dict()
    return out, state


@pytest.mark.slow
def test_rollback_reloads_the_healthy_set(data_root, tmp_path, monkeypatch, capsys):
    """--on_collapse rollback, with --LC and --amp fp16: the run goes back to the healthy set
    (saved at 100, healthy 300 clean iterations on), its whole training state bit for bit as
    a --resume from it gives it (G, D, G_ema, both optimizers, the fp16 loss scales, the LeCam
    anchors), both learning rates halved; the _healthy set outlives --num_save_copies; a
    relaunch with the same flags resumes with the halved rates."""
    rng = np.random.default_rng(1)

    def losses_at(itr, state_dict):
        # D wins from 401 on (the set saved at 100 is healthy at 400) until the rollback.
        cured = state_dict['collapse']['rollbacks'] > 0
        return (healthy_losses if itr <= 400 or cured else d_wins_losses)(rng)
    seen = {}
    flags = ('--G_lr', '1e-4', '--D_lr', '4e-4', '--LC', '0.01', '--amp', 'fp16')
    watched_run(data_root, tmp_path, monkeypatch, losses_at, '--total_itrs', '610',
                '--save_every', '100', '--num_save_copies', '1', '--on_collapse', 'rollback',
                *flags, seen=seen)
    line, = [line for line in capsys.readouterr().out.splitlines() if 'collapse at' in line]
    record, = events(tmp_path)
    assert record['action'] == 'rollback' and record['healthy_itr'] == 100
    assert record['G_lr'] == pytest.approx(5e-5) and record['D_lr'] == pytest.approx(2e-4)
    assert 'last healthy checkpoint: ' in line and '_healthy.pth (itr 100)' in line
    # In memory after the rollback: what a resume from the _healthy set starts from, which is
    # the state of itr 100, but for the learning rates.
    weights = str(tmp_path / 'weights')
    after, (healthy, _) = seen['after_rollback'], resumed(weights, 'healthy', *flags)
    for name in ('G', 'D'):
        lr = after[name + '_optim']['param_groups'][0]['lr']
        assert lr == pytest.approx(record[name + '_lr'])
        after[name + '_optim']['param_groups'][0]['lr'] = seen[100][name + '_optim'][
            'param_groups'][0]['lr']
    assert sorted(after) == ['D', 'D_optim', 'G', 'G_ema', 'G_optim', 'amp', 'anchors']
    assert_same(after, healthy, 'after the rollback')
    assert_same(after, seen[100], 'after the rollback')
    # The collapsed state was another one in each part (so the comparisons can fail).
    for key in after:
        with pytest.raises(AssertionError):
            assert_same(seen[500][key], seen[100][key])
    folder = tmp_path / 'weights' / NAME
    state = checkpoints.torch_load(str(folder / 'state_dict_healthy.pth'))
    assert state['itr'] == 100 and sorted(state['files']) == sorted(
        f'{n}_healthy.pth' for n in ('G', 'G_optim', 'D', 'D_optim', 'G_ema'))
    assert not os.path.exists(folder / 'G_copy1.pth')  # one rolling copy only
    # A relaunch of the same command resumes with the halved rates (the resume rule).
    latest, state = resumed(weights, None, *flags)
    assert latest['G_optim']['param_groups'][0]['lr'] == pytest.approx(5e-5)
    assert latest['D_optim']['param_groups'][0]['lr'] == pytest.approx(2e-4)
    assert state['collapse'] == {'rollbacks': 1}


@pytest.mark.slow
def test_ranks_roll_back_and_stop_together(data_root, tmp_path):
    """Two ranks (gloo on CPU), each launched as torchrun launches it (its environment
    variables; torchrun's own agent would kill the other rank at the first exit and report one
    status), running tests/collapse_rank.py: the stand-in step moves each rank's weights its
    own way, the rule's windows are shortened. Rank 0 judges and broadcasts: at the first
    collapse every rank reloads the _healthy set, the same weights on every rank and bit for
    bit the set on disk, with both learning rates halved; at the second, --max_rollbacks 1
    being spent, every rank exits with status 3 and the one line."""
    import subprocess
    import sys

    from distributed import free_port
    flags = run_flags(data_root, str(tmp_path), NAME, '--collapse_watch', '--on_collapse',
                      'rollback', '--max_rollbacks', '1', '--save_every', '60',
                      '--num_save_copies', '0', '--total_itrs', '300', '--G_lr', '1e-4',
                      '--D_lr', '4e-4')
    env = {**os.environ, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(free_port()),
           'WORLD_SIZE': '2', 'OMP_NUM_THREADS': '1'}
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'tests', 'collapse_rank.py'), str(tmp_path)] + flags,
        env={**env, 'RANK': str(rank), 'LOCAL_RANK': str(rank)}, cwd=str(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [3, 3], [err[-2000:] for _, err in outs]
    rollback, stop = events(tmp_path)
    assert (rollback['action'], rollback['healthy_itr'], rollback['rollback']) == (
        'rollback', 60, 1)
    assert rollback['G_lr'] == pytest.approx(5e-5) and rollback['D_lr'] == pytest.approx(2e-4)
    assert stop['action'] == 'stop' and stop['itr'] > rollback['itr']
    # One line each: rank 0 warns of the rollback (on stdout) and every rank ends with the
    # stop's line (on stderr), the same on both.
    warned = [[line for line in out.splitlines() if 'collapse at' in line] for out, _ in outs]
    assert len(warned[0]) == 1 and warned[1] == []
    assert warned[0][0].startswith(f"warning: collapse at itr {rollback['onset']}: D wins")
    (line,), (other,) = [err.strip().splitlines() for _, err in outs]
    assert line == other and line.startswith(f"collapse at itr {stop['onset']}: D wins")
    assert line.endswith('1 rollback(s) done, --max_rollbacks 1: stopping')
    # Every rank's state after the rollback: the _healthy set on disk, but for the rates.
    healthy, state = resumed(str(tmp_path / 'weights'), 'healthy', '--G_lr', '1e-4',
                             '--D_lr', '4e-4')
    assert state['itr'] == 60
    ranks = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=True) for rank in range(2)]
    for rank, seen in enumerate(ranks):
        after = seen['after_rollback']
        for name in ('G', 'D'):
            group = after[name + '_optim']['param_groups'][0]
            assert group['lr'] == pytest.approx(rollback[name + '_lr']), (rank, name)
            group['lr'] = healthy[name + '_optim']['param_groups'][0]['lr']
        assert_same(after, healthy, f'rank {rank} after the rollback')
    # Before it the ranks' weights had parted, from each other and from the set.
    for key in ('G', 'D', 'G_optim'):
        with pytest.raises(AssertionError):
            assert_same(ranks[0]['before'][key], ranks[1]['before'][key])
        with pytest.raises(AssertionError):
            assert_same(ranks[1]['before'][key], healthy[key])


@pytest.mark.slow
def test_rollback_needs_checkpoints(tmp_path, capsys):
    """--on_collapse rollback with --save_every 0 is refused at start-up (exit 2)."""
    with pytest.raises(SystemExit) as refused:
        train.main(TINY_FLAGS + ['--collapse_watch', '--on_collapse', 'rollback',
                                 '--save_every', '0', '--base_root', str(tmp_path)])
    assert refused.value.code == 2
    assert '--save_every' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_plot_logs_collapse_cli(tmp_path, monkeypatch, capsys):
    """plot_logs.py --collapse on a recorded run's loss logs: the onset and the checkpoints
    before it printed, exit 0, the onset drawn on both panels of the losses figure."""
    import shutil
    src = os.path.join(FIXTURES, 'collapse', 'collapse_dlr1e-2_bs8')
    os.makedirs(tmp_path / 'run')
    for f in ('G_loss.log', 'D_loss_real.log', 'D_loss_fake.log', 'metalog.txt'):
        shutil.copy(os.path.join(src, f), tmp_path / 'run' / f)
    drawn = []
    mark = plot_logs.mark_onsets

    def recording(fig, onsets):
        mark(fig, onsets)
        drawn.append([line.get_xdata() for ax in fig.axes for line in ax.lines
                      if line.get_linestyle() == '--'])
    monkeypatch.setattr(plot_logs, 'mark_onsets', recording)
    plot_logs.main(['--experiment_name', 'run', '--logs_root', str(tmp_path), '--collapse'])
    out = capsys.readouterr().out.splitlines()
    onset = recorded()['collapse_dlr1e-2_bs8']['onset']
    assert out[0].startswith(f'collapse at itr {onset}: D wins (median D loss ')
    assert out[1] == (f'  last checkpoint before it: itr {(onset - 1) // 100 * 100}; last '
                      'healthy one by the rule: itr 100 (the _healthy set of a run with '
                      '--collapse_watch)')
    assert (tmp_path / 'run' / 'losses.png').is_file()
    assert [list(x) for x in drawn[0]] == [[onset, onset], [onset, onset]]  # both panels


def test_impossible_fids_are_no_evidence():
    """A NaN, infinite or negative FID (a damaged or crafted log) never enters the FID rule,
    online or offline (both go through Detector.test)."""
    import collapse
    detector = collapse.Detector()
    for itr, fid in enumerate([10.0, -1e6, float('nan'), float('inf'), 'x', 12.0]):
        detector.test(itr, {'FID': fid})
    assert detector.tests == [(0, 10.0), (5, 12.0)]


def test_an_action_without_the_watch_is_refused(data_root, tmp_path, capsys):
    """--on_collapse stop or rollback without --collapse_watch would never act: one line,
    exit 2, before anything is written."""
    for action in ('stop', 'rollback'):
        with pytest.raises(SystemExit) as refused:
            train.main(run_flags(data_root, str(tmp_path), NAME, '--on_collapse', action))
        err = capsys.readouterr().err.strip().splitlines()
        assert refused.value.code == 2 and len(err) == 1 and '--collapse_watch' in err[0], err
    assert not os.path.exists(tmp_path / 'logs') and not os.path.exists(tmp_path / 'weights')


def test_losses_and_singular_values_no_step_gives_are_no_evidence():
    """A loss that is not finite, a D loss below 0 (hinge and DCGAN losses are >= 0) or a
    singular value that is not finite or below 0 (a damaged or crafted log) never enters the
    rule, online or offline (both go through Detector.losses and Detector.svs): a G loss of
    inf throughout was judged 'D wins'."""
    import collapse
    detector = collapse.Detector()
    rows = [(1.0, 0.5, 0.5), (math.inf, 0.5, 0.5), (1.0, -math.inf, 0.5), (1.0, 0.5, -0.1),
            (math.nan, 0.5, 0.5), (-2.0, 0.0, 0.0)]
    for itr, row in enumerate(rows):
        detector.losses(itr, dict(zip(collapse.LOSSES, row)))
        detector.svs(itr, {'G_linear_sv0': [1.5, math.inf, -1.0, math.nan, 0.0, 2.0][itr]})
    assert [r[0] for r in detector.window] == [0, 5]
    assert [itr for itr, _ in detector.sv] == [0, 4, 5]


def test_a_save_every_no_run_writes_is_unknown(tmp_path):
    """metalog.txt's save_every read as the whole number a config repr writes: 10**30 or
    1e308 (no run writes either) are unknown, not 10 or 1 (which named checkpoints that do not
    exist)."""
    os.makedirs(tmp_path / 'run')
    for text, want in [('100', 100), ('10**30', 0), ('1e308', 0), ('7}', 7)]:
        (tmp_path / 'run' / 'metalog.txt').write_text(
            f"datetime: x\nconfig: {{'save_every': {text}, 'seed': 0}}\n")
        assert plot_logs.save_every(str(tmp_path), 'run') == want, text
