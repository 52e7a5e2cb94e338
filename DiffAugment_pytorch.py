"""Differentiable augmentation (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN
Training", arXiv 2006.10738), with the public API of the DiffAugment fork of BigGAN-PyTorch.

    from DiffAugment_pytorch import DiffAugment
    x_aug = DiffAugment(x, policy='translation,cutout')

Given the same torch RNG state, outputs equal the fork's bit for bit: the same draws (one value
per sample, from torch's global generator on x's device, in the same order, shapes and dtypes)
and the same floating-point expressions. Images are expected in [-1, 1]; nothing is rescaled.
"""
import torch
import torch.nn.functional as F


class PolicyError(KeyError, ValueError):
    """An unknown augmentation name in a policy; a KeyError, as the fork raised."""

    def __str__(self):
        return str(self.args[0]) if self.args else ''


def policy_names(policy):
    """The augmentation names of a comma-separated policy ([] for ''), each checked."""
    if not policy:
        return []
    names = policy.split(',')
    for name in names:
        if name not in AUGMENT_FNS:
            raise PolicyError(f'unknown DiffAugment policy name {name!r} in {policy!r}: use '
                              f"comma-separated names from {', '.join(AUGMENT_FNS)}, e.g. "
                              f'translation,cutout')
    return names


def DiffAugment(x, policy='', channels_first=True):
    """x (N, C, H, W), or (N, H, W, C) with channels_first=False, augmented by every op of
    every name in policy, in order; x itself when the policy is empty."""
    if not policy:
        return x
    names = policy_names(policy)  # all checked before the first draw
    if not channels_first:
        x = x.permute(0, 3, 1, 2)
    for name in names:
        for op in AUGMENT_FNS[name]:
            x = op(x)
    if not channels_first:
        x = x.permute(0, 2, 3, 1)
    return x.contiguous()


def _per_sample_rand(x):
    """One uniform [0, 1) value per sample, in x's dtype: (N, 1, 1, 1)."""
    return torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)


def rand_brightness(x):
    """Add a per-sample shift in [-0.5, 0.5)."""
    return x + (_per_sample_rand(x) - 0.5)


def rand_saturation(x):
    """Scale each pixel's deviation from its channel mean by a factor in [0, 2)."""
    mean = x.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    return (x - mean) * (_per_sample_rand(x) * 2) + mean


def rand_contrast(x):
    """Scale the deviation from the image mean by a factor in [0.5, 1.5)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)  # (N, 1, 1, 1)
    return (x - mean) * (_per_sample_rand(x) + 0.5) + mean


def rand_translation(x, ratio=0.125):
    """Shift each image by whole pixels, up to ratio of its size each way; zeros fill in."""
    n, c, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-shift_h, shift_h + 1, size=[n, 1, 1], device=x.device)
    ty = torch.randint(-shift_w, shift_w + 1, size=[n, 1, 1], device=x.device)
    # Output (i, j) reads input (i + tx, j + ty); a one-pixel zero border catches every
    # source outside the image once indices are clamped onto it. The gather runs on
    # channels-last pixels, so gradients reach earlier ops in the fork's memory layout and
    # their reductions round alike.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + tx + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + ty + 1).clamp(0, w + 1)
    index = (rows * (w + 2) + cols).view(n, h * w, 1).expand(n, h * w, c)  # (N, H*W, C)
    pixels = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).reshape(n, (h + 2) * (w + 2), c)
    return pixels.gather(1, index).view(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def rand_cutout(x, ratio=0.5):
    """Zero a square of side ratio x size (all channels) at a random centre; it may hang off
    the edge."""
    n, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # An even side's centre ranges over 0..size inclusive, an odd side's over 0..size-1.
    ox = torch.randint(0, h + (1 - size_h % 2), size=[n, 1, 1], device=x.device)
    oy = torch.randint(0, w + (1 - size_w % 2), size=[n, 1, 1], device=x.device)
    top, left = ox - size_h // 2, oy - size_w // 2  # (N, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    cut = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    mask = (~cut).to(x.dtype)  # (N, H, W): 0 inside the square
    return x * mask.unsqueeze(1)


# Policy name -> ops applied in order; extend it to add a policy.
AUGMENT_FNS = {
    'color': [rand_brightness, rand_saturation, rand_contrast],
    'translation': [rand_translation],
    'cutout': [rand_cutout],
}
