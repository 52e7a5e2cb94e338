"""The training step, checkpoint-and-sample, and test, as train.py calls them."""
import functools
import math
import operator

import torch

import inception_utils
import losses
import utils
from checkpoints import save_weights
from distributed import broadcast_object, get_rank, get_world_size
from files import own_folder
from metrics import BEST
from step_helpers import Precision, lecam_anchors, ortho_hook, train_only


def dummy_training_function():
    """A no-op step, for testing the loop."""
    def train(x, y):
        return {}
    return train


def track_outputs(ema_losses, D_fake, D_real, itr):
    """Fold the batch means of D's outputs into the LeCam anchors, fakes first (what the fork's
    hinge loss does). Under DDP the means span every rank's batch, so all ranks hold the
    anchors one process would, and rank 0's checkpoint resumes them all."""
    means = torch.stack([D_fake.detach().mean(), D_real.detach().mean()])
    world_size = get_world_size()
    if world_size > 1:
        torch.distributed.all_reduce(means)
        means = means / world_size
    fake, real = means.tolist()
    ema_losses.update(fake, 'D_fake', itr)
    ema_losses.update(real, 'D_real', itr)


def accumulate(terms, scores, count):
    """The terms' values on scores, by name, and their sum (in list order) divided by count."""
    values = {term.name: term(scores) for term in terms}
    return values, functools.reduce(operator.add, values.values()) / float(count)


def GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config, precision=None,
                          ema_losses=None):
    """Returns train(x, y): num_D_steps D steps, then one G step, then the EMA update.

    x holds batch_size * num_D_steps * num_D_accumulations real images. The losses are
    losses.D_terms and losses.G_terms, summed; train returns each term's last value by name
    (D's per accumulation, G's divided by num_G_accumulations, as the release reported them).
    --DiffAugment, --CR and --LC act as in the DiffAugment and LeCam forks; ema_losses (the
    LeCam anchors) defaults to lecam_anchors(config, state_dict), and its state is kept in
    state_dict['ema_losses'].
    """
    # A config built the release's way has no device: the models' is the one to use.
    precision = precision or Precision(config, next(G.parameters()).device)
    bs = config['batch_size']
    if ema_losses is None:
        ema_losses = lecam_anchors(config, state_dict)
    D_terms = losses.D_terms(config, ema_losses, track_outputs, precision.D_scaler)
    G_terms = losses.G_terms(config)
    D_pass = {'train_G': False, 'split_D': config['split_D'],
              'policy': config.get('DiffAugment', ''), 'CR': config.get('CR', 0) > 0,
              'CR_augment': config.get('CR_augment')}
    G_pass = {'train_G': True, 'split_D': config['split_D'], 'policy': D_pass['policy']}
    D_ortho = ortho_hook(D, config['D_ortho'])
    # The shared embedding is left out of ortho reg: orthogonal class embeddings mean nothing.
    G_ortho = ortho_hook(G, config['G_ortho'], blacklist=list(G.shared.parameters()))

    def D_scores(x, y, itr):
        z_.sample_()
        y_.sample_()
        if any(term.needs_real_grad(itr) for term in D_terms):
            x = x.detach().requires_grad_(True)
        D_out = [d.float() for d in GD(z_[:bs], y_[:bs], x, y, **D_pass)]
        return losses.Scores(*D_out, x=x, y=y, itr=itr)

    def train(x, y):
        itr = state_dict['itr']
        G.optim.zero_grad()
        D.optim.zero_grad()
        x = torch.split(x, bs)
        y = torch.split(y, bs)
        counter = 0

        # Update D.
        train_only(config, D, G)
        for _ in range(config['num_D_steps']):
            D.optim.zero_grad()
            for _ in range(config['num_D_accumulations']):
                with precision.autocast():
                    D_values, D_loss = accumulate(D_terms, D_scores(x[counter], y[counter], itr),
                                                  config['num_D_accumulations'])
                precision.D_scaler.scale(D_loss).backward()
                counter += 1
            precision.step(precision.D_scaler, D.optim, 'D', D_ortho)

        # Update G.
        train_only(config, G, D)
        G.optim.zero_grad()
        G_losses = []
        for _ in range(config['num_G_accumulations']):
            z_.sample_()
            y_.sample_()
            with precision.autocast():
                scores = losses.Scores(GD(z_, y_, **G_pass).float(), itr=itr)
                G_values, G_loss = accumulate(G_terms, scores, config['num_G_accumulations'])
            precision.G_scaler.scale(G_loss).backward()
            G_losses.append(G_loss.detach())
        for term in D_terms + G_terms:
            term.after_G(G_losses, state_dict)
        precision.step(precision.G_scaler, G.optim, 'G', G_ortho)

        # Update G_ema.
        if config['ema']:
            ema.update(itr)

        count = float(config['num_G_accumulations'])
        out = {name: float((value / count).item()) for name, value in G_values.items()}
        out.update((name, float(value.item())) for name, value in D_values.items())
        out.update(precision.skipped_steps())
        return out
    return train


def which_G(G, G_ema, config):
    """The generator used for samples and metrics."""
    return G_ema if config['ema'] and config['use_ema'] else G


def save_and_sample(G, D, G_ema, z_, y_, fixed_z, fixed_y, state_dict, config,
                    experiment_name):
    """Checkpoint (latest plus a rolling copy), then fixed-z, class and interpolation sheets.

    Under DDP every rank calls it (checkpoints gather every rank's RNG); rank 0 writes.
    """
    # The slot advances before writing, so the saved save_num names the *next* copy slot and a
    # resumed run keeps rotating (the release saved the old number and overwrote its newest copy).
    # The slot is held within --num_save_copies: a resume may lower it, or its state_dict.pth
    # hold any count (10**20 wrote a _copy100000000000000000000 set rotation never replaced).
    slot = state_dict['save_num'] % max(config['num_save_copies'], 1)
    if config['num_save_copies'] > 0:
        state_dict['save_num'] = (slot + 1) % config['num_save_copies']
    save_weights(G, D, state_dict, config['weights_root'], experiment_name, None,
                 G_ema if config['ema'] else None)
    if config['num_save_copies'] > 0:
        save_weights(G, D, state_dict, config['weights_root'], experiment_name,
                     f'copy{slot}', G_ema if config['ema'] else None)

    if get_rank() != 0:
        return
    G_sample = which_G(G, G_ema, config)
    with utils.sampling(G_sample, z_, y_, config):
        folder = own_folder(config['samples_root'], experiment_name)
        fixed_Gz = utils.run_G(G_sample, fixed_z, fixed_y, config['parallel'])
        utils.save_image(fixed_Gz, f"{folder}/fixed_samples{state_dict['itr']}.jpg",
                         nrow=int(fixed_Gz.shape[0] ** 0.5))
        utils.save_sheets(G_sample, config, experiment_name, state_dict['itr'], z_)


def update_best(state_dict, metrics, which_best):
    """Record each metric's best value so far in state_dict (best_IS and best_FID, the
    release's, always; best_KID, best_precision, ... once measured), each in its direction
    (metrics.BEST); return whether which_best improved."""
    improved = False
    for name, (key, higher) in BEST.items():
        if key not in metrics:
            continue
        old = state_dict.get(f'best_{name}', -math.inf if higher else math.inf)
        better = metrics[key] > old if higher else metrics[key] < old
        improved |= better and name == which_best
        state_dict[f'best_{name}'] = metrics[key] if better else old
    return improved


def test(G, D, G_ema, z_, y_, state_dict, config, sample, get_inception_metrics,
         experiment_name, test_log):
    """Inception metrics; a best-copy checkpoint when which_best improved; the JSONL line.

    get_inception_metrics returns a dict (inception_utils.prepare_metrics) or the release's
    (IS_mean, IS_std, FID). Returns the metrics logged ({'IS_mean', 'IS_std', 'FID', ...}).
    Under DDP every rank calls it: the metrics come from every rank's samples.
    """
    G_sample = which_G(G, G_ema, config)
    with utils.sampling(G_sample, z_, y_, config):
        metrics = get_inception_metrics(sample, config['num_inception_images'], num_splits=10,
                                        prints=get_rank() == 0)
    if not isinstance(metrics, dict):
        metrics = dict(zip(('IS_mean', 'IS_std', 'FID'), metrics))
    # Every rank acts on rank 0's numbers, so all of them agree on saving a best copy.
    metrics = dict(broadcast_object(metrics))
    protocol = metrics.pop('protocol', None)
    metrics = {k: float(v) for k, v in metrics.items()}
    rank0 = get_rank() == 0
    if rank0:
        print(inception_utils.metrics_line(state_dict['itr'], metrics))
    # State advances before the write, so the best copy (and any later checkpoint) carries it.
    improved = update_best(state_dict, metrics, config['which_best'])
    if improved and config['num_best_copies'] > 0:
        slot = state_dict['save_best_num'] % config['num_best_copies']
        state_dict['save_best_num'] = (slot + 1) % config['num_best_copies']
        save_weights(G, D, state_dict, config['weights_root'], experiment_name,
                     f'best{slot}', G_ema if config['ema'] else None)
    if rank0:
        # The stamp says how the numbers were measured; a measure without one (the release's
        # get_inception_metrics) logs none, as the release did.
        test_log.log(itr=int(state_dict['itr']), **metrics,
                     **({'protocol': protocol} if protocol is not None else {}))
    return metrics
