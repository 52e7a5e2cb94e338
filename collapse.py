"""Collapse watch: one rule over what a run measures, judging a live run and a finished run's
logs alike (docs/collapse.md).

A run feeds a Detector, in iteration order, what it logs: each iteration's losses, the
spectral-norm layers' sv0 values at the watch's cadence and IS/FID at tests, all as the logs
hold them (as_logged). Every EVERY iterations the Detector judges the last WINDOW iterations
(judge, a pure function of that window) and keeps the verdict's history:

- signals: what the window shows, each a name with its measured values (signal_names);
- a collapse: signals at PERSIST consecutive judgements. Its onset is the first of them, so a
  short spike that recovers raises nothing;
- candidates and healthy sets: a checkpoint saved at itr s is a candidate (one at a time) and
  becomes healthy once the judgements of HEALTHY_AFTER iterations past it saw no signal at all;
  a signal before then discards it.

train.py feeds it live (--collapse_watch) and acts on its events; scan() feeds it a finished
run's logs (plot_logs.read_experiment) and finds the same onsets: the rule is this module only.
"""
import collections
import math
import re

import numpy as np

from flags import CollapseStop

# The rule. Frozen from the evidence in docs/collapse.md; changing one changes what every
# recorded run's verdict is (tests/test_collapse.py replays them).
EVERY = 10             # iterations between judgements
WINDOW = 200           # iterations of losses and singular values each judgement reads
MIN_POINTS = 100       # loss points a window needs before the loss signals judge it
D_WINS_LOSS = 0.1      # D wins: median D loss (real + fake) below this ...
D_WINS_G_LOSS = 1.0    # ... while the median G loss is above this (D's fakes past the margin)
FROZEN_SPREAD = 1e-3   # losses frozen: G's and D's fake loss vary by less than this (MAD)
SV_RATIO = 3.0         # sv0 explode: a layer's window median this many times its lowest
SV_LOOKBACK = 1000     # ... window median of the judgements this many iterations back,
SV_BASE_AFTER = 200    # ... from this iteration on (past the first steps' transients)
FID_RATIO = 2.0        # FID worse: the last two tests' FID above this many times the best
PERSIST = 10           # consecutive judgements with signals that make a collapse
HEALTHY_AFTER = 300    # clean iterations past a checkpoint that make it healthy

LOSSES = ('G_loss', 'D_loss_real', 'D_loss_fake')
FROZEN = ('G_loss', 'D_loss_fake')
SV0 = re.compile(r'^[GD]_.*sv0$')  # utils.get_SVs' names of the top singular values


def as_logged(values, logstyle):
    """values ({name: float}) as the .log files hold them: through logstyle's %-format, so the
    live watch judges the numbers a later scan of the logs reads. Unchanged for the styles
    that write no text (pickle, mat)."""
    if '%' not in logstyle:
        return dict(values)
    return {k: float(logstyle % v) for k, v in values.items()}


def mad(values):
    """Median absolute deviation from the median: a spread that a few outliers do not move."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(np.abs(values - np.median(values))))


def judge(losses, svs, sv_base, tests):
    """The signals one window shows, {name: description}, empty when it looks healthy.

    losses: {'G_loss', 'D_loss_real', 'D_loss_fake': arrays of the window's values};
    svs: {SN layer sv0 name: array of the window's values}; sv_base: {name: lowest window
    median of the earlier judgements within SV_LOOKBACK}; tests: [(itr, FID)] of every test
    so far, in order. Pure.
    """
    signals = {}
    n = min((len(losses.get(k, ())) for k in LOSSES), default=0)
    if n >= MIN_POINTS:
        G = np.asarray(losses['G_loss'], dtype=np.float64)
        D = (np.asarray(losses['D_loss_real'], dtype=np.float64)
             + np.asarray(losses['D_loss_fake'], dtype=np.float64))
        D_med, G_med = float(np.median(D)), float(np.median(G))
        if D_med < D_WINS_LOSS and G_med > D_WINS_G_LOSS:
            signals['D wins'] = (f'median D loss {D_med:.3g} < {D_WINS_LOSS:g}, median G loss '
                                 f'{G_med:.3g} > {D_WINS_G_LOSS:g}')
        # G's side of the game stands still: its samples no longer move D's outputs (one image
        # for every z, or a dead D). The real loss still varies with the data.
        spread = {k: mad(losses[k]) for k in FROZEN}
        if all(v < FROZEN_SPREAD for v in spread.values()):
            signals['losses frozen'] = ', '.join(
                f'{k} varies by {v:.2g}' for k, v in spread.items()) + (
                f' (median absolute deviation < {FROZEN_SPREAD:g})')
    worst = None
    for name, values in svs.items():
        base = sv_base.get(name)
        if base is None or not base > 0 or len(values) == 0:
            continue
        ratio = float(np.median(values)) / base
        if ratio > SV_RATIO and (worst is None or ratio > worst[1]):
            worst = (name, ratio)
    if worst is not None:
        signals['sv0 explode'] = (f'{worst[0]} {worst[1]:.3g}x its lowest in {SV_LOOKBACK} '
                                  f'iterations (> {SV_RATIO:g}x)')
    fids = [f for _, f in tests if math.isfinite(f)]
    if len(fids) >= 3:
        best = min(fids[:-2])
        if fids[-2] > FID_RATIO * best and fids[-1] > FID_RATIO * best:
            signals['FID worse'] = (f'FID {fids[-2]:.4g}, {fids[-1]:.4g} at the last two tests '
                                    f'> {FID_RATIO:g} x best {best:.4g}')
    return signals


def signal_names(signals):
    """'D wins (median ...), losses frozen (...)': a judgement's signals in one phrase."""
    return ', '.join(f'{name} ({why})' for name, why in signals.items())


Collapse = collections.namedtuple('Collapse', 'onset itr signals healthy')
Collapse.__doc__ = """A collapse: signals since judgement `onset`, confirmed at `itr` with
`signals` ({name: description}); `healthy` is the itr of the last healthy checkpoint (None)."""


class Detector(object):
    """The rule's state over one run, fed in iteration order (see the module's docstring).

    losses/svs/test take what the run logs; judge(itr) runs at itr % EVERY == 0 and returns a
    Collapse when one is confirmed there (once per collapse), else None; saved(itr) says
    whether a checkpoint written at itr becomes the candidate; rolled_back() forgets the
    collapsed weights' measurements. `events` lists ('candidate' | 'healthy' | 'discarded',
    itr) as they happen, for the caller to act on (and clear).
    """

    def __init__(self):
        self.window = collections.deque()   # (itr, G_loss, D_loss_real, D_loss_fake)
        self.sv = collections.deque()       # (itr, {name: sv0})
        self.sv_medians = {}                # name: deque of (judgement itr, window median)
        self.tests = []                     # (itr, FID)
        self.streak = []                    # judgement itrs with signals, consecutive
        self.confirmed = False              # the current streak was reported
        self.signals = {}                   # the last judgement's
        self.candidate = None               # itr of the checkpoint on probation
        self.healthy = None                 # itr of the last healthy checkpoint
        self.collapses = []
        self.events = []

    def losses(self, itr, values):
        # Only losses a step can give are evidence: finite, D's (hinge or DCGAN) >= 0. A run
        # stops at a non-finite loss anyway; a log holding one is damaged.
        if all(k in values for k in LOSSES):
            row = tuple(float(values[k]) for k in LOSSES)
            if all(map(math.isfinite, row)) and min(row[1:]) >= 0:
                self.window.append((itr,) + row)

    def svs(self, itr, values):
        # A singular value is finite and >= 0.
        values = {k: float(v) for k, v in values.items() if SV0.match(k)
                  and math.isfinite(float(v)) and float(v) >= 0}
        if values:
            self.sv.append((itr, values))

    def test(self, itr, metrics):
        # A FID is a distance: a NaN or negative one (a damaged log) is no evidence either way.
        fid = metrics.get('FID')
        if isinstance(fid, (int, float)) and math.isfinite(fid) and fid >= 0:
            self.tests.append((itr, float(fid)))

    def saved(self, itr):
        """A checkpoint was written at itr: True when it becomes the candidate."""
        if self.candidate is not None or self.streak:
            return False
        self.candidate = itr
        self.events.append(('candidate', itr))
        return True

    def rolled_back(self):
        """The weights went back to the healthy set: the window and the singular values' history
        belong to the collapsed weights and are dropped."""
        self.window.clear()
        self.sv.clear()
        self.sv_medians = {}
        self.streak = []
        self.confirmed = False

    def _trim(self, itr):
        while self.window and self.window[0][0] <= itr - WINDOW:
            self.window.popleft()
        while self.sv and self.sv[0][0] <= itr - WINDOW:
            self.sv.popleft()

    def judge(self, itr):
        """Judge the window ending at itr; a Collapse when one is confirmed here."""
        self._trim(itr)
        rows = np.array([r[1:] for r in self.window], dtype=np.float64).reshape(-1, 3)
        losses = dict(zip(LOSSES, rows.T))
        series = collections.defaultdict(list)
        for _, values in self.sv:
            for name, v in values.items():
                series[name].append(v)
        for history in self.sv_medians.values():
            while history and history[0][0] <= itr - SV_LOOKBACK:
                history.popleft()
        base = {name: min(m for _, m in history)
                for name, history in self.sv_medians.items() if history}
        self.signals = judge(losses, series, base, self.tests)
        # A judgement's medians join the history once its window is full and past the start.
        if itr >= SV_BASE_AFTER and self.sv and self.sv[0][0] <= itr - WINDOW + EVERY:
            for name, values in series.items():
                self.sv_medians.setdefault(name, collections.deque()).append(
                    (itr, float(np.median(values))))
        if not self.signals:
            self.streak = []
            self.confirmed = False
            if self.candidate is not None and itr - self.candidate >= HEALTHY_AFTER:
                self.healthy, self.candidate = self.candidate, None
                self.events.append(('healthy', self.healthy))
            return None
        self.streak.append(itr)
        if self.candidate is not None:
            self.events.append(('discarded', self.candidate))
            self.candidate = None
        if len(self.streak) < PERSIST or self.confirmed:
            return None
        self.confirmed = True
        found = Collapse(self.streak[0], itr, dict(self.signals), self.healthy)
        self.collapses.append(found)
        return found


def scan(run, save_every=0, rollbacks=(), until=None):
    """Feed a run's logs (up to iteration until) to a Detector, as the live watch fed them;
    returns it (its .collapses, .healthy, ...).

    run: plot_logs.read_experiment's dict; save_every: the run's --save_every (its candidates);
    rollbacks: the iterations the watch rolled back at (rollback_itrs), where the scan forgets
    the window as the watch did.
    """
    metrics, tests = run['metrics'], run['tests']
    per_itr = collections.defaultdict(dict)
    for name in LOSSES:
        if name in metrics:
            for i, v in zip(*metrics[name]):
                per_itr[int(i)].setdefault('losses', {})[name] = float(v)
    for name, (itrs, values) in metrics.items():
        if SV0.match(name):
            for i, v in zip(itrs, values):
                per_itr[int(i)].setdefault('svs', {})[name] = float(v)
    if tests and 'FID' in tests:
        for i, f in zip(tests['itr'], tests['FID']):
            per_itr[int(i)]['test'] = {'FID': float(f)}
    detector = Detector()
    rollbacks = set(rollbacks)
    for itr in sorted(per_itr):
        if until is not None and itr > until:
            break
        record = per_itr[itr]
        detector.losses(itr, record.get('losses', {}))
        detector.svs(itr, record.get('svs', {}))
        if 'test' in record:
            detector.test(itr, record['test'])
        if save_every and itr % save_every == 0:
            detector.saved(itr)
        if itr % EVERY == 0:
            detector.judge(itr)
        if itr in rollbacks:
            detector.rolled_back()
    return detector


# ----------------------------------------------------------------------------
# Online: what train.py runs under --collapse_watch.

class Watch(object):
    """--collapse_watch: feeds a Detector what rank 0 logs, keeps the candidate and healthy
    checkpoint sets on disk, and acts on a collapse as --on_collapse says.

    Every rank makes one and calls it at the same points; rank 0 judges and every rank receives
    its decision, so all of them roll back (or stop) together. torch and the checkpoint code
    are imported here, so that reading logs (plot_logs.py) needs numpy only.
    """

    def __init__(self, config, experiment_name, state_dict, nets, test_log=None,
                 precision=None, anchors=None):
        import checkpoints
        import distributed
        import step_helpers
        self.ckpt, self.dist, self.helpers = checkpoints, distributed, step_helpers
        self.config, self.name, self.state_dict = config, experiment_name, state_dict
        self.G, self.D, self.G_ema = nets
        # The step's fp16 loss scales and LeCam anchors (None without --amp fp16 / --LC):
        # part of the state a rollback restores.
        self.precision, self.anchors = precision, anchors
        self.test_log = test_log
        self.rank0 = distributed.get_rank() == 0
        state_dict.setdefault('collapse', {'rollbacks': 0})
        self.detector = Detector()
        if config['resume'] and self.rank0:
            # The logs up to the checkpoint, through the same Detector: the state the watch
            # had when it was saved.
            import plot_logs
            run = plot_logs.read_experiment(config['logs_root'], experiment_name)
            self.detector = scan(run, config['save_every'], rollback_itrs(run),
                                 until=state_dict['itr'])
            self.detector.events.clear()

    @staticmethod
    def due(itr):
        """Whether the singular values are read (and logged) at itr."""
        return itr % EVERY == 0

    def observe(self, itr, losses, svs):
        """This iteration's losses and (when due) singular values, as logged."""
        if self.rank0:
            self.detector.losses(itr, as_logged(losses, self.config['logstyle']))
            self.detector.svs(itr, as_logged(svs, self.config['logstyle']))

    def tested(self, itr, metrics):
        if self.rank0:
            self.detector.test(itr, metrics)

    def saved(self, itr):
        """A checkpoint was written at itr: it becomes the candidate when none is on probation
        (its files linked as the _candidate set, before the next save replaces them)."""
        every = self.config['save_every']
        if self.rank0 and every > 0 and not itr % every and self.detector.saved(itr):
            self._copy('', self.ckpt.CANDIDATE_SET)

    def _copy(self, source, target):
        self.ckpt.copy_set(self.config['weights_root'], self.name, source, target)

    def healthy_phrase(self):
        itr = self.detector.healthy
        if itr is None:
            return 'none yet'
        folder = f"{self.config['weights_root']}/{self.name}"
        return f'{folder}/*_{self.ckpt.HEALTHY_SET}.pth (itr {itr})'

    def judge(self, itr):
        """At a judgement, rank 0 judges; every rank then acts on its decision."""
        if itr % EVERY:
            return
        decision = None
        if self.rank0:
            found = self.detector.judge(itr)
            if any(event == 'healthy' for event, _ in self.detector.events):
                self._copy(self.ckpt.CANDIDATE_SET, self.ckpt.HEALTHY_SET)
            self.detector.events.clear()
            if found is not None:
                decision = self._decide(found)
        decision = self.dist.broadcast_object(decision)
        if decision is None:
            return
        if decision['action'] == 'rollback':
            self._rollback(decision)
        elif decision['action'] == 'stop':
            raise CollapseStop(decision['line'])

    def _decide(self, found):
        """The action for a confirmed collapse, its line and its jsonl record (rank 0)."""
        config, done = self.config, self.state_dict['collapse']['rollbacks']
        line = (f'collapse at itr {found.onset}: {signal_names(found.signals)} (confirmed at '
                f'itr {found.itr}); last healthy checkpoint: {self.healthy_phrase()}')
        action = config['on_collapse']
        if action == 'rollback' and found.healthy is None:
            action, line = 'stop', line + '; no healthy checkpoint to roll back to: stopping'
        elif action == 'rollback' and done >= config['max_rollbacks']:
            action, line = 'stop', line + (f"; {done} rollback(s) done, --max_rollbacks "
                                           f"{config['max_rollbacks']}: stopping")
        record = {'itr': found.itr, 'event': 'collapse', 'onset': found.onset,
                  'signals': found.signals, 'healthy_itr': found.healthy, 'action': action}
        if action == 'rollback':
            scale = config['collapse_lr_scale']
            lrs = {n: self.ckpt.optimizer_settings(net.optim)['lr'] * scale
                   for n, net in (('G', self.G), ('D', self.D))}
            record.update(G_lr=lrs['G'], D_lr=lrs['D'], rollback=done + 1)
            line += (f"; rolling back to it with G_lr {lrs['G']:.3g}, D_lr {lrs['D']:.3g} "
                     f"(rollback {done + 1} of at most {config['max_rollbacks']})")
        if self.test_log is not None:
            self.test_log.log(record)
        if action != 'stop':  # a stop's line is printed as the run ends (flags.run_cli)
            # On its own line, past the progress line.
            print(f'\nwarning: {line}', flush=True)
        return {'action': action, 'line': line, **record}

    def _rollback(self, decision):
        """Every rank: reload the healthy set, lower both learning rates, and save the result as
        the latest set, so a relaunch of the same command resumes here with the lower rates
        (checkpoints.override_optimizer_settings keeps a checkpoint's rates when the flags
        are ones a launch of the run gave).

        The set's whole training state comes back as a --resume from it restores it (train.py):
        G, D, G_ema, both optimizers, the fp16 loss scales and the LeCam anchors. The
        iteration and epoch counters, the copy slots, the bests, the random streams and the
        rollback count go on: they describe the run, not the weights."""
        config = self.config
        scratch = {'config': config}
        self.ckpt.load_weights(self.G, self.D, scratch, config['weights_root'], self.name,
                               self.ckpt.HEALTHY_SET, self.G_ema, notices=False)
        if self.precision is not None and 'amp' in scratch:
            self.precision.load_state_dict(scratch['amp'])
            self.state_dict.update(self.precision.state_dict())
        if self.anchors is not None:
            # What a resume builds from the set: its anchors, or fresh ones if it has none.
            self.anchors.load_state_dict(
                self.helpers.lecam_anchors(config, scratch).state_dict())
            self.state_dict['ema_losses'] = self.anchors.state_dict()
        self.ckpt.set_optimizer_settings(self.G.optim, lr=decision['G_lr'])
        self.ckpt.set_optimizer_settings(self.D.optim, lr=decision['D_lr'])
        self.state_dict['collapse']['rollbacks'] = decision['rollback']
        self.detector.rolled_back()
        self.ckpt.save_weights(self.G, self.D, self.state_dict, config['weights_root'],
                               self.name, None, self.G_ema)


def rollback_itrs(run):
    """The iterations a run's watch rolled back at, from its jsonl 'collapse' records."""
    return [int(e['itr']) for e in run.get('events', ())
            if e.get('event') == 'collapse' and e.get('action') == 'rollback']
