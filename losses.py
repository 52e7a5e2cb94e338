"""GAN losses: hinge (the default) and the non-saturating DCGAN loss."""
import torch
import torch.nn.functional as F


def loss_dcgan_dis(dis_fake, dis_real):
    """Returns (loss on real, loss on fake)."""
    return torch.mean(F.softplus(-dis_real)), torch.mean(F.softplus(dis_fake))


def loss_dcgan_gen(dis_fake):
    return torch.mean(F.softplus(-dis_fake))


def loss_hinge_dis(dis_fake, dis_real):
    """Returns (loss on real, loss on fake)."""
    return torch.mean(F.relu(1. - dis_real)), torch.mean(F.relu(1. + dis_fake))


def loss_hinge_gen(dis_fake):
    return -torch.mean(dis_fake)


generator_loss = loss_hinge_gen
discriminator_loss = loss_hinge_dis
