"""What the training step uses beside its losses (losses.py): precision (autocast and loss
scaling for --amp), the EMA of G's weights, the LeCam anchors (the EMA of D's outputs), ortho
reg and toggle_grad. utils.py and train_fns.py re-export the names their users import.
"""
import contextlib

import torch

from distributed import pick_device
from flags import is_count, is_finite_number

# ----------------------------------------------------------------------------
# Precision.

def autocast(device_type, dtype=None):
    """torch.autocast to dtype, or nothing when dtype is None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def amp_dtype(config):
    """The autocast dtype --amp asks for; None means float32."""
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(config.get('amp'))


def config_autocast(config, device=None):
    """autocast as --amp asks, on device (default: --device, else auto)."""
    return autocast(pick_device(device or config.get('device')).type, amp_dtype(config))


class Precision(object):
    """autocast and loss scaling for --amp; float32 (both off) when it is empty."""

    def __init__(self, config, device=None):
        self.dtype = amp_dtype(config)
        self.device_type = pick_device(device or config.get('device')).type
        use_scaler = self.dtype == torch.float16
        self.G_scaler = torch.amp.GradScaler(self.device_type, enabled=use_scaler)
        self.D_scaler = torch.amp.GradScaler(self.device_type, enabled=use_scaler)
        self.skipped = {'G': 0, 'D': 0}

    def autocast(self):
        return autocast(self.device_type, self.dtype)

    def state_dict(self):
        """{'amp': the loss scalers' state} for checkpoints (plain data); {} without fp16."""
        if not self.G_scaler.is_enabled():
            return {}
        return {'amp': {'G_scaler': self.G_scaler.state_dict(),
                        'D_scaler': self.D_scaler.state_dict(), 'skipped': dict(self.skipped)}}

    @staticmethod
    def check_state_dict(state):
        """What is wrong with a saved state_dict()['amp'], or None: each scaler's scale finite
        and > 0, growth above 1, backoff in (0, 1), intervals and counts non-negative ints (a
        NaN or negative scale would be kept and saved again, every step skipped or ascending)."""
        if not isinstance(state, dict) or set(state) != {'G_scaler', 'D_scaler', 'skipped'}:
            return 'is not the G_scaler, D_scaler and skipped of --amp fp16'
        for name in ('G_scaler', 'D_scaler'):
            sc = state[name]
            if not (isinstance(sc, dict) and is_finite_number(sc.get('scale')) and sc['scale'] > 0
                    and is_finite_number(sc.get('growth_factor')) and sc['growth_factor'] > 1
                    and is_finite_number(sc.get('backoff_factor')) and 0 < sc['backoff_factor'] < 1
                    and is_count(sc.get('growth_interval'), 1)
                    and is_count(sc.get('_growth_tracker'))):
                return f'has a {name} ({sc!r:.80}) that is not a loss scaler\'s state'
        skipped = state['skipped']
        if not (isinstance(skipped, dict) and set(skipped) == {'G', 'D'}
                and all(is_count(v) for v in skipped.values())):
            return f'has skipped step counts {skipped!r:.60} that are not counts'
        return None

    def load_state_dict(self, state):
        """Restore what state_dict()['amp'] held, so an fp16 run resumes with its scales."""
        if self.G_scaler.is_enabled():
            self.G_scaler.load_state_dict(state['G_scaler'])
            self.D_scaler.load_state_dict(state['D_scaler'])
            self.skipped.update(state['skipped'])

    def skipped_steps(self):
        """{'G_skipped_steps', 'D_skipped_steps'} for the step's outputs under fp16; {} else."""
        if not self.G_scaler.is_enabled():
            return {}
        return {'G_skipped_steps': self.skipped['G'], 'D_skipped_steps': self.skipped['D']}

    def step(self, scaler, optim, name, before_step=None):
        """Unscale, run before_step (ortho reg adds to true gradients), step, count skips."""
        if scaler.is_enabled():
            scaler.unscale_(optim)
        if before_step is not None:
            before_step()
        if not scaler.is_enabled():
            optim.step()
            return
        scale = scaler.get_scale()
        scaler.step(optim)
        scaler.update()
        # GradScaler lowers the scale exactly when it skipped the step for inf/NaN gradients.
        self.skipped[name] += int(scaler.get_scale() < scale)


# ----------------------------------------------------------------------------
# EMA of G and the LeCam anchors.

class ema(object):
    """Exponential moving average of every state-dict entry of source into target."""

    def __init__(self, source, target, decay=0.9999, start_itr=0):
        self.source = source
        self.target = target
        self.decay = decay
        self.start_itr = start_itr
        with torch.no_grad():
            for key, value in self.source.state_dict().items():
                self.target.state_dict()[key].copy_(value)

    @torch.no_grad()
    def update(self, itr=None):
        # Before ema_start the target tracks the source outright.
        decay = 0.0 if itr is not None and itr < self.start_itr else self.decay
        # The dicts are fetched afresh: .to(memory_format=...) or .to(device) swap the tensors
        # behind the parameters, and stale references would silently stop the average.
        source, target = self.source.state_dict(), self.target.state_dict()
        floats = [k for k, v in source.items() if v.is_floating_point()]
        targets = [target[k] for k in floats]
        torch._foreach_mul_(targets, decay)
        torch._foreach_add_(targets, [source[k] for k in floats], alpha=1 - decay)
        for k, v in source.items():
            if not v.is_floating_point():
                target[k].copy_(v)


class ema_losses(object):
    """Moving averages of the training losses and of D's mean outputs, as the LeCam fork keeps
    them: D_real and D_fake are the anchors losses.lecam_reg pulls D's outputs towards."""

    KEYS = ('G_loss', 'D_loss_real', 'D_loss_fake', 'D_real', 'D_fake')

    def __init__(self, init=1000., decay=0.9, start_itr=0):
        for key in self.KEYS:
            setattr(self, key, init)
        self.decay = decay
        self.start_itr = start_itr

    def update(self, cur, mode, itr):
        """Fold cur into the average named mode; before start_itr it simply becomes cur."""
        if mode not in self.KEYS:
            raise ValueError(f"ema_losses has no {mode!r}: use one of {', '.join(self.KEYS)}")
        decay = 0.0 if itr < self.start_itr else self.decay
        setattr(self, mode, getattr(self, mode) * decay + cur * (1 - decay))

    def state_dict(self):
        """The averages as plain floats, for state_dict.pth."""
        return {key: float(getattr(self, key)) for key in self.KEYS}

    @classmethod
    def check_state_dict(cls, state):
        """What is wrong with a saved state_dict(), or None: each of KEYS a finite number (a
        NaN anchor makes every later LeCam term NaN, and is saved again)."""
        if not isinstance(state, dict) or set(state) != set(cls.KEYS):
            return f"does not hold exactly {', '.join(cls.KEYS)}"
        for key in cls.KEYS:
            if not is_finite_number(state[key]):
                return f'has {key} {state[key]!r:.40}, not a finite number'
        return None

    def load_state_dict(self, state):
        for key in self.KEYS:
            setattr(self, key, state[key])


def lecam_anchors(config, state_dict):
    """The LeCam fork's ema_losses for --LC (None without it), holding the anchors a
    resumed run saved in state_dict['ema_losses']."""
    if not config.get('LC', 0) > 0:
        return None
    anchors = ema_losses(decay=config['LC_ema_decay'], start_itr=config['LC_start'])
    if 'ema_losses' in state_dict:
        anchors.load_state_dict(state_dict['ema_losses'])
    return anchors


# ----------------------------------------------------------------------------
# Regularisers and gradient switches.

def ortho_grad(w, strength, offdiag=True):
    """strength * gradient of 0.5 * ||W W^T (- I or masked diagonal)||_F^2 for a 2-D w."""
    gram = torch.mm(w, w.t())
    eye = torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
    gram = gram * (1. - eye) if offdiag else gram - eye
    return strength * 2 * torch.mm(gram, w)


@torch.no_grad()
def ortho(model, strength=1e-4, blacklist=()):
    """BigGAN's modified ortho reg: adds its gradient straight to .grad (no extra backward)."""
    for param in model.parameters():
        if len(param.shape) < 2 or param.grad is None or any(param is p for p in blacklist):
            continue
        w = param.reshape(param.shape[0], -1)  # channels_last weights too
        param.grad += ortho_grad(w, strength).view(param.shape)


@torch.no_grad()
def default_ortho(model, strength=1e-4, blacklist=()):
    """The classic ortho reg (penalises W W^T - I)."""
    for param in model.parameters():
        if len(param.shape) < 2 or param.grad is None or any(param is p for p in blacklist):
            continue
        w = param.reshape(param.shape[0], -1)
        param.grad += ortho_grad(w, strength, offdiag=False).view(param.shape)


def ortho_hook(model, strength, blacklist=()):
    """ortho(model, strength, blacklist) to run before an optimizer step; None when the
    strength is 0 (--G_ortho/--D_ortho off)."""
    if strength <= 0.0:
        return None
    return lambda: ortho(model, strength, blacklist=blacklist)


def train_only(config, train, frozen):
    """With --toggle_grads, make train's parameters require grad and frozen's not (the
    release's switch before each D and G step); without it, leave both as they are."""
    if config['toggle_grads']:
        toggle_grad(train, True)
        toggle_grad(frozen, False)


def toggle_grad(model, on_or_off):
    """requires_grad_ on every parameter of model."""
    model.requires_grad_(on_or_off)
