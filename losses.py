"""GAN losses: hinge (the default) and the non-saturating DCGAN loss, and the LeCam
regulariser (Tseng et al., "Regularizing Generative Adversarial Networks under Limited Data",
CVPR 2021), with the signatures of the LeCam fork (google/lecam-gan)."""
import torch
import torch.nn.functional as F


def loss_dcgan_dis(dis_fake, dis_real, ema=None, it=None):
    """Returns (loss on real, loss on fake); ema and it are accepted and ignored."""
    return torch.mean(F.softplus(-dis_real)), torch.mean(F.softplus(dis_fake))


def loss_dcgan_gen(dis_fake, dis_real=None):
    return torch.mean(F.softplus(-dis_fake))


def loss_hinge_dis(dis_fake, dis_real, ema=None, it=None):
    """Returns (loss on real, loss on fake). With an ema (utils.ema_losses), first tracks the
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


generator_loss = loss_hinge_gen
discriminator_loss = loss_hinge_dis
