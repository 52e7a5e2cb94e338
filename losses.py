"""GAN losses: hinge (the default) and the non-saturating DCGAN loss, the LeCam regulariser
(Tseng et al., "Regularizing Generative Adversarial Networks under Limited Data", CVPR 2021)
with the signatures of the LeCam fork (google/lecam-gan), consistency regularisation and the
R1 gradient penalty (Mescheder et al., "Which Training Methods for GANs do actually
Converge?", ICML 2018).

The training step's losses are lists of named terms (D_terms, G_terms): each term is a weight
times a function of what D scored, the step sums them and reports each under its name. A new
regulariser is one Term here and its flag in flags.py.
"""
import torch
import torch.nn.functional as F


def loss_dcgan_dis(dis_fake, dis_real, ema=None, it=None):
    """Returns (loss on real, loss on fake); ema and it are accepted and ignored."""
    return torch.mean(F.softplus(-dis_real)), torch.mean(F.softplus(dis_fake))


def loss_dcgan_gen(dis_fake, dis_real=None):
    return torch.mean(F.softplus(-dis_fake))


def loss_hinge_dis(dis_fake, dis_real, ema=None, it=None):
    """Returns (loss on real, loss on fake). With an ema (step_helpers.ema_losses), first tracks the
    batch means of D's outputs on fakes, then on reals, at iteration it."""
    if ema is not None:
        ema.update(torch.mean(dis_fake).item(), 'D_fake', it)
        ema.update(torch.mean(dis_real).item(), 'D_real', it)
    return torch.mean(F.relu(1. - dis_real)), torch.mean(F.relu(1. + dis_fake))


def loss_hinge_gen(dis_fake, dis_real=None):
    return -torch.mean(dis_fake)


def lecam_reg(dis_real, dis_fake, ema):
    """mean(relu(D(x) - alpha_F)^2) + mean(relu(alpha_R - D(G(z)))^2), alpha_R = ema.D_real and
    alpha_F = ema.D_fake (floats): one-sided, only reals scored above the fakes' anchor and
    fakes scored below the reals' anchor are pulled back."""
    return (torch.mean(F.relu(dis_real - ema.D_fake).pow(2))
            + torch.mean(F.relu(ema.D_real - dis_fake).pow(2)))


def consistency_reg(dis_real_aug, dis_real_CR):
    """mean((D(x_CR) - D(x))^2): D's scores on the --CR_augment reals against the reals'."""
    return torch.mean((dis_real_CR - dis_real_aug) ** 2)


def r1_penalty(dis_real, reals, scale=None):
    """E ||grad_x D(x)||^2 over the batch, with the graph kept so that it trains D.

    scale multiplies D's scores before the gradient is taken and divides the gradient after
    (R1.scale: under --amp fp16, where D's backward runs in float16 and the small input
    gradients of a smooth D, what R1 drives it towards, would flush to 0 unscaled).
    """
    if scale is None:
        grad, = torch.autograd.grad(dis_real.sum(), reals, create_graph=True)
    else:
        grad, = torch.autograd.grad(dis_real.sum() * scale, reals, create_graph=True)
        grad = grad / scale
    return grad.pow(2).flatten(1).sum(1).mean()


# The release's choice of adversarial loss: reassign these to switch (the step reads them at
# every call).
generator_loss = loss_hinge_gen
discriminator_loss = loss_hinge_dis


# ----------------------------------------------------------------------------
# Named terms.

class Scores(object):
    """What one D or G pass gives the terms: D's scores on fakes (D_fake), on reals (D_real)
    and on the --CR reals (D_real_CR), the real images and classes (x, y) and the iteration.
    The reals require grad exactly when a term asked for it (Term.needs_real_grad)."""

    def __init__(self, D_fake, D_real=None, D_real_CR=None, x=None, y=None, itr=0):
        self.D_fake, self.D_real, self.D_real_CR = D_fake, D_real, D_real_CR
        self.x, self.y, self.itr = x, y, itr


class Term(object):
    """One named part of a loss: weight * fn(scores)."""

    def __init__(self, name, fn, weight=1.0):
        self.name, self.fn, self.weight = name, fn, weight

    def __call__(self, scores):
        return self.fn(scores) * self.weight

    def needs_real_grad(self, itr):
        """Whether this iteration's reals must carry gradient into the term."""
        return False

    def after_G(self, G_losses, state_dict):
        """Called once G's accumulations are queued, with their (divided) losses."""


class LeCam(Term):
    """--LC: lecam_reg times the weight, added once itr > the anchors' start_itr. track(anchors,
    D_fake, D_real, itr) first folds each batch's mean scores into the anchors (the step's
    train_fns.track_outputs, which averages over DDP ranks); the anchors also average G's loss
    and are kept in state_dict['ema_losses'] for a resume."""

    def __init__(self, weight, anchors, track):
        super().__init__('D_loss_LC', lambda s: lecam_reg(s.D_real, s.D_fake, anchors), weight)
        self.anchors, self.track = anchors, track

    def __call__(self, scores):
        self.track(self.anchors, scores.D_fake, scores.D_real, scores.itr)
        if scores.itr <= self.anchors.start_itr:
            return scores.D_real.new_zeros(())
        return super().__call__(scores)

    def after_G(self, G_losses, state_dict):
        # Read once all accumulations are queued: one host sync, not one per accumulation.
        self.anchors.update(sum(t.item() for t in G_losses), 'G_loss', state_dict['itr'])
        state_dict['ema_losses'] = self.anchors.state_dict()


class R1(Term):
    """--R1 gamma: gamma/2 * r1_penalty on the reals. Lazy with --R1_every k (StyleGAN2's lazy
    regularisation): only iterations divisible by k pay for it, weighted k times, so it
    averages to the same strength; the others report 0 and compute nothing extra. scaler is
    D's GradScaler (enabled under --amp fp16 only)."""

    def __init__(self, gamma, every=1, scaler=None):
        super().__init__('D_loss_R1', lambda s: r1_penalty(s.D_real, s.x, self.scale()),
                         gamma / 2 * every)
        self.every, self.scaler = every, scaler

    def scale(self):
        """sqrt(S) for D's loss scale S under fp16, else None (no scaling).

        Two float16 backwards meet in R1: the input gradient's, whose values grow with the
        scale s its scores are multiplied by, and the penalty's own (the double backward),
        whose values grow with S / s, since D's loss, penalty included, is multiplied by S.
        s = S would leave the second unscaled, and it underflows as the first did; sqrt(S)
        gives both the same headroom. An overflow in either makes D's gradients inf or NaN:
        GradScaler skips the step and lowers S, as for any other term.
        """
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        return self.scaler.get_scale() ** 0.5

    def needs_real_grad(self, itr):
        return itr % self.every == 0

    def __call__(self, scores):
        if not self.needs_real_grad(scores.itr):
            return scores.D_real.new_zeros(())
        return super().__call__(scores)


def D_terms(config, anchors=None, track=None, scaler=None):
    """D's loss terms for config, in the order they are summed: the adversarial loss on reals
    and on fakes, then --CR, --LC (with the anchors and their track function) and --R1 (with
    D's GradScaler, which scales its input gradient under --amp fp16)."""
    terms = [Term('D_loss_real', lambda s: discriminator_loss(s.D_fake, s.D_real)[0]),
             Term('D_loss_fake', lambda s: discriminator_loss(s.D_fake, s.D_real)[1])]
    if config.get('CR', 0) > 0:
        terms.append(Term('D_loss_CR', lambda s: consistency_reg(s.D_real, s.D_real_CR),
                          config['CR']))
    if config.get('LC', 0) > 0:
        terms.append(LeCam(config['LC'], anchors, track))
    if config.get('R1', 0) > 0:
        terms.append(R1(config['R1'], config.get('R1_every', 1), scaler))
    return terms


def G_terms(config):
    """G's loss terms: the adversarial loss on fakes."""
    return [Term('G_loss', lambda s: generator_loss(s.D_fake))]
