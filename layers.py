"""Layers shared by BigGAN.py and BigGANdeep.py.

Spectral norm keeps the release's buffers (`u0..`, `sv0..`) so its checkpoints load as they are;
class-conditional BN keeps `stored_mean`/`stored_var` for the same reason.
"""
import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import Parameter as P

from flags import ConfigError

# ----------------------------------------------------------------------------
# Spectral norm by power iteration.

def proj(x, y):
    """Projection of x onto y (both row vectors)."""
    return torch.mm(y, x.t()) * y / torch.mm(y, y.t())


def gram_schmidt(x, ys):
    """Orthogonalise x against every vector in ys."""
    for y in ys:
        x = x - proj(x, y)
    return x


def power_iteration(W, u_, update=True, eps=1e-12):
    """One power-iteration step per singular vector; returns (svs, us, vs).

    The vectors are computed without grad, so the singular value's gradient flows through W only.
    """
    us, vs, svs = [], [], []
    for i, u in enumerate(u_):
        with torch.no_grad():
            v = F.normalize(gram_schmidt(torch.matmul(u, W), vs), eps=eps)
            vs.append(v)
            u = F.normalize(gram_schmidt(torch.matmul(v, W.t()), us), eps=eps)
            us.append(u)
            if update:
                u_[i][:] = u
        svs.append(torch.squeeze(torch.matmul(torch.matmul(v, W.t()), u.t())))
    return svs, us, vs


def flat_weight(w):
    """w as (out, -1) without a copy; a channels_last conv weight's columns come permuted,
    which leaves its singular values unchanged."""
    if w.dim() == 4 and not w.is_contiguous() and w.is_contiguous(
            memory_format=torch.channels_last):
        return w.permute(0, 2, 3, 1).reshape(w.size(0), -1)
    return w.reshape(w.size(0), -1)


class SN(object):
    """Mixin: divides `self.weight` by its largest singular value, estimated by power iteration."""

    def __init__(self, num_svs, num_itrs, num_outputs, transpose=False, eps=1e-12):
        self.num_itrs = num_itrs
        self.num_svs = num_svs
        self.transpose = transpose
        self.eps = eps
        for i in range(self.num_svs):
            self.register_buffer(f'u{i}', torch.randn(1, num_outputs))
            self.register_buffer(f'sv{i}', torch.ones(1))

    @property
    def u(self):
        return [getattr(self, f'u{i}') for i in range(self.num_svs)]

    @property
    def sv(self):
        return [getattr(self, f'sv{i}') for i in range(self.num_svs)]

    def W_(self):
        """The normalised weight; u vectors and logged svs update only in training mode."""
        W_mat = flat_weight(self.weight)
        if self.transpose:
            W_mat = W_mat.t()
        # The power iteration runs in float32 even under autocast: it is numerically delicate.
        with torch.autocast(W_mat.device.type, enabled=False):
            W_mat = W_mat.float()
            for _ in range(self.num_itrs):
                svs, us, vs = power_iteration(W_mat, self.u, update=self.training, eps=self.eps)
        if self.training:
            with torch.no_grad():
                for i, sv in enumerate(svs):
                    self.sv[i][:] = sv
        return self.weight / svs[0].to(self.weight.dtype)


class SNConv2d(nn.Conv2d, SN):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, num_svs=1, num_itrs=1, eps=1e-12):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias)
        SN.__init__(self, num_svs, num_itrs, out_channels, eps=eps)

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class SNLinear(nn.Linear, SN):
    def __init__(self, in_features, out_features, bias=True, num_svs=1, num_itrs=1, eps=1e-12):
        nn.Linear.__init__(self, in_features, out_features, bias)
        SN.__init__(self, num_svs, num_itrs, out_features, eps=eps)

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


class SNEmbedding(nn.Embedding, SN):
    """Spectrally normalised embedding; the release's D projection uses it."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2, scale_grad_by_freq=False, sparse=False, _weight=None,
                 num_svs=1, num_itrs=1, eps=1e-12):
        nn.Embedding.__init__(self, num_embeddings, embedding_dim, padding_idx, max_norm,
                              norm_type, scale_grad_by_freq, sparse, _weight)
        SN.__init__(self, num_svs, num_itrs, num_embeddings, eps=eps)

    def forward(self, x):
        return F.embedding(x, self.W_())


# ----------------------------------------------------------------------------
# Self-attention (SAGAN).

class Attention(nn.Module):
    def __init__(self, ch, which_conv=SNConv2d, name='attention'):
        super().__init__()
        if ch < 8:
            # ch // 8 query and key channels: fewer than 8 leaves none, and the first
            # forward fails on an empty reshape.
            raise ConfigError(f'self-attention needs at least 8 channels where it sits, got '
                              f'{ch}: raise --G_ch/--D_ch or leave that resolution out of '
                              f'--G_attn/--D_attn')
        self.ch = ch
        self.which_conv = which_conv
        self.theta = self.which_conv(self.ch, self.ch // 8, kernel_size=1, padding=0, bias=False)
        self.phi = self.which_conv(self.ch, self.ch // 8, kernel_size=1, padding=0, bias=False)
        self.g = self.which_conv(self.ch, self.ch // 2, kernel_size=1, padding=0, bias=False)
        self.o = self.which_conv(self.ch // 2, self.ch, kernel_size=1, padding=0, bias=False)
        # gamma starts at 0 so the block starts as the identity.
        self.gamma = P(torch.tensor(0.), requires_grad=True)

    def forward(self, x, y=None):
        n, _, h, w = x.shape
        theta = self.theta(x).reshape(n, self.ch // 8, h * w)                # (N, C/8, HW)
        phi = F.max_pool2d(self.phi(x), [2, 2]).reshape(n, self.ch // 8, -1)  # (N, C/8, HW/4)
        g = F.max_pool2d(self.g(x), [2, 2]).reshape(n, self.ch // 2, -1)      # (N, C/2, HW/4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)           # (N, HW, HW/4)
        o = torch.bmm(g, beta.transpose(1, 2)).reshape(n, self.ch // 2, h, w) # (N, C/2, H, W)
        return self.gamma * self.o(o) + x


# ----------------------------------------------------------------------------
# Batch norm variants.

def fused_bn(x, mean, var, gain=None, bias=None, eps=1e-5):
    """Normalise with given statistics, folding gain and bias into one scale and shift."""
    scale = torch.rsqrt(var + eps)
    if gain is not None:
        scale = scale * gain
    shift = mean * scale
    if bias is not None:
        shift = shift - bias
    return x * scale - shift


_LOCAL_STATS = [False]


@contextlib.contextmanager
def local_batch_stats():
    """Inside, cross-replica BN uses this process's batch only: for sampling on one rank."""
    _LOCAL_STATS.append(True)
    try:
        yield
    finally:
        _LOCAL_STATS.pop()


def spans_ranks(cross_replica):
    """Whether BN statistics span every rank: cross_replica under a process group, outside
    local_batch_stats."""
    return (cross_replica and not _LOCAL_STATS[-1] and dist.is_available()
            and dist.is_initialized())


def at_least_float32(t):
    """t in float32 at least (float64 stays float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def batch_moments(x):
    """Per-channel mean and biased variance of x in float32, as the release's manual_bn."""
    float_x = at_least_float32(x)
    m = torch.mean(float_x, [0, 2, 3], keepdim=True)
    m2 = torch.mean(float_x ** 2, [0, 2, 3], keepdim=True)
    return m, m2 - m ** 2


class _CPUSyncBNOps:
    """CPU versions of the CUDA-only kernels torch.nn.SyncBatchNorm uses, same signatures.

    Statistics are per-channel float32 (mean, invstd); counts are elements per channel.
    """

    @staticmethod
    def batch_norm_stats(x, eps):
        var, mean = torch.var_mean(at_least_float32(x), [0, 2, 3], correction=0)
        return mean, torch.rsqrt(var + eps)

    @staticmethod
    def batch_norm_gather_stats_with_counts(ref, mean_all, invstd_all, running_mean, running_var,
                                            momentum, eps, counts):
        # Chan et al.'s merge: M2 = sum_r [M2_r + n_r (mean_r - mean)^2], never E[x^2] - E[x]^2.
        n = counts.view(-1, 1)
        mean = (n * mean_all).sum(0) / n.sum()
        m2 = (n * (invstd_all.pow(-2) - eps + (mean_all - mean) ** 2)).sum(0)
        return mean, torch.rsqrt(m2 / n.sum() + eps)

    @staticmethod
    def batch_norm_elemt(x, weight, bias, mean, invstd, eps):
        return ((at_least_float32(x) - mean[:, None, None]) * invstd[:, None, None]).to(x.dtype)

    @staticmethod
    def batch_norm_backward_reduce(dy, x, mean, invstd, weight, input_g, weight_g, bias_g):
        dy = at_least_float32(dy)
        xmu = at_least_float32(x) - mean[:, None, None]
        return dy.sum([0, 2, 3]), (dy * xmu).sum([0, 2, 3]), None, None

    @staticmethod
    def batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts):
        n = counts.sum()
        xmu = at_least_float32(x) - mean[:, None, None]
        factor = (invstd ** 2 * sum_dy_xmu / n)[:, None, None]
        return ((at_least_float32(dy) - (sum_dy / n)[:, None, None] - xmu * factor)
                * invstd[:, None, None]).to(dy.dtype)


class SyncBN(torch.autograd.Function):
    """Batch norm without affine terms whose statistics span every rank if across_ranks.

    As torch.nn.SyncBatchNorm: each rank's count, mean and invstd are gathered and merged
    (counts, means and centred second moments), and backward all-reduces the centred sums of dy
    and dy * (x - mean), so float32 stays accurate for non-centred activations; ranks may hold
    different batch sizes. CUDA runs PyTorch's fused kernels, CPU their equivalents above.
    Without across_ranks it normalises with this process's batch. Returns the normalised x and,
    without gradients, the float32 batch mean, biased variance and element count per channel.
    """

    @staticmethod
    def forward(ctx, x, eps, across_ranks):
        ops = torch if x.is_cuda else _CPUSyncBNOps
        if x.is_cuda and not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous()
        mean, invstd = ops.batch_norm_stats(x, eps)
        count = torch.full((1,), x.numel() // x.size(1), dtype=mean.dtype, device=x.device)
        stats = torch.cat([mean, invstd, count])  # (2C + 1,)
        if across_ranks:
            parts = [torch.empty_like(stats) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, stats)
            stats = torch.stack(parts)  # (world, 2C + 1)
        mean_all, invstd_all, counts = stats.view(-1, stats.size(-1)).split(mean.numel(), 1)
        # The first argument only sets the counts' dtype (without running stats): float32, not
        # x's, so counts stay exact under autocast.
        mean, invstd = ops.batch_norm_gather_stats_with_counts(
            mean_all, mean_all, invstd_all, None, None, 0.0, eps, counts.view(-1))
        counts = counts.view(-1).to(torch.int32)
        ctx.save_for_backward(x, mean, invstd, counts)
        ctx.across_ranks = across_ranks
        var, n = invstd.pow(-2) - eps, counts.sum()
        ctx.mark_non_differentiable(mean, var, n)
        return ops.batch_norm_elemt(x, None, None, mean, invstd, eps), mean, var, n

    @staticmethod
    def backward(ctx, dy, *_):
        x, mean, invstd, counts = ctx.saved_tensors
        ops = torch if x.is_cuda else _CPUSyncBNOps
        if x.is_cuda and not dy.is_contiguous(memory_format=torch.channels_last):
            dy = dy.contiguous()
        sum_dy, sum_dy_xmu, _, _ = ops.batch_norm_backward_reduce(
            dy, x, mean, invstd, None, True, False, False)
        if ctx.across_ranks:
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums)
            sum_dy, sum_dy_xmu = sums.chunk(2)
        dx = ops.batch_norm_backward_elemt(dy, x, mean, invstd, None, sum_dy, sum_dy_xmu, counts)
        return dx, None, None


def manual_bn(x, gain=None, bias=None, return_mean_var=False, eps=1e-5, cross_replica=False):
    """Batch norm computed by hand in float32 (so stats are exact under mixed precision)."""
    if not spans_ranks(cross_replica):
        m, var = batch_moments(x)
        out = fused_bn(x, m.to(x.dtype), var.to(x.dtype), gain, bias, eps)
        m, var = m.squeeze(), var.squeeze()
    else:
        out, m, var, _ = SyncBN.apply(x, eps, True)
        out = out if gain is None else out * gain
        out = out if bias is None else out + bias
    if return_mean_var:
        return out, m, var
    return out


class myBN(nn.Module):
    """The release's batch norm, which can also accumulate standing statistics."""

    def __init__(self, num_channels, eps=1e-5, momentum=0.1, cross_replica=False):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.cross_replica = cross_replica
        self.register_buffer('stored_mean', torch.zeros(num_channels))
        self.register_buffer('stored_var', torch.ones(num_channels))
        self.register_buffer('accumulation_counter', torch.zeros(1))
        self.accumulate_standing = False

    def reset_stats(self):
        self.stored_mean[:] = 0
        self.stored_var[:] = 0
        self.accumulation_counter[:] = 0

    def forward(self, x, gain, bias):
        if self.training:
            out, mean, var = manual_bn(x, gain, bias, return_mean_var=True, eps=self.eps,
                                       cross_replica=self.cross_replica)
            with torch.no_grad():
                if self.accumulate_standing:
                    self.stored_mean += mean
                    self.stored_var += var
                    self.accumulation_counter += 1.0
                else:
                    self.stored_mean.mul_(1 - self.momentum).add_(mean * self.momentum)
                    self.stored_var.mul_(1 - self.momentum).add_(var * self.momentum)
            return out
        mean = self.stored_mean.view(1, -1, 1, 1)
        var = self.stored_var.view(1, -1, 1, 1)
        if self.accumulate_standing:
            mean = mean / self.accumulation_counter
            var = var / self.accumulation_counter
        return fused_bn(x, mean, var, gain, bias, self.eps)


def sync_batch_norm(x, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """F.batch_norm without affine terms whose batch statistics span every DDP rank.

    It keeps the same buffers as the plain path, so one checkpoint serves with and without
    `--cross_replica`; without a process group (or inside local_batch_stats) it is F.batch_norm.
    """
    if not spans_ranks(cross_replica=training):
        return F.batch_norm(x, running_mean, running_var, None, None, training, momentum, eps)
    out, m, var, n = SyncBN.apply(x, eps, True)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(m, alpha=momentum)
        # Running variance is unbiased, as F.batch_norm keeps it.
        running_var.mul_(1 - momentum).add_(var * (momentum * n / (n - 1).clamp(min=1)))
    return out


def groupnorm(x, norm_style):
    """Group norm with groups given in norm_style ('gn_ch_16': 16 channels a group, 'gn_grp_8')."""
    if 'ch' in norm_style:
        ch = int(norm_style.split('_')[-1])
        groups = max(int(x.shape[1]) // ch, 1)
    elif 'grp' in norm_style:
        groups = int(norm_style.split('_')[-1])
    else:
        groups = 16
    return F.group_norm(x, groups)


class ccbn(nn.Module):
    """Class-conditional batch norm: gain 1 + linear(y) and bias linear(y) per sample."""

    def __init__(self, output_size, input_size, which_linear, eps=1e-5, momentum=0.1,
                 cross_replica=False, mybn=False, norm_style='bn'):
        super().__init__()
        self.output_size, self.input_size = output_size, input_size
        self.gain = which_linear(input_size, output_size)
        self.bias = which_linear(input_size, output_size)
        self.eps = eps
        self.momentum = momentum
        self.cross_replica = cross_replica
        self.mybn = mybn
        self.norm_style = norm_style
        if self.mybn:
            self.bn = myBN(output_size, self.eps, self.momentum, cross_replica=cross_replica)
        elif self.norm_style in ['bn', 'in']:
            self.register_buffer('stored_mean', torch.zeros(output_size))
            self.register_buffer('stored_var', torch.ones(output_size))

    def extra_repr(self):
        return f'out: {self.output_size}, in: {self.input_size}, cross_replica={self.cross_replica}'

    def forward(self, x, y):
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)  # (N, C, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)         # (N, C, 1, 1)
        if self.mybn:
            return self.bn(x, gain=gain.to(x.dtype), bias=bias.to(x.dtype))
        if self.norm_style == 'bn' and self.cross_replica:
            out = sync_batch_norm(x, self.stored_mean, self.stored_var, self.training,
                                  self.momentum, self.eps)
        elif self.norm_style == 'bn':
            out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None,
                               self.training, 0.1, self.eps)
        elif self.norm_style == 'in':
            out = F.instance_norm(x, self.stored_mean, self.stored_var, None, None,
                                  self.training, 0.1, self.eps)
        elif self.norm_style.startswith('gn'):
            out = groupnorm(x, self.norm_style)
        elif self.norm_style == 'nonorm':
            out = x
        else:
            raise ValueError(f'unknown norm_style {self.norm_style!r}: use bn, in, gn, gn_ch_N, '
                             f'gn_grp_N or nonorm')
        return out * gain + bias


class bn(nn.Module):
    """Unconditional batch norm with learnable gain and bias (G's output layer)."""

    def __init__(self, output_size, eps=1e-5, momentum=0.1, cross_replica=False, mybn=False):
        super().__init__()
        self.output_size = output_size
        self.gain = P(torch.ones(output_size), requires_grad=True)
        self.bias = P(torch.zeros(output_size), requires_grad=True)
        self.eps = eps
        self.momentum = momentum
        self.cross_replica = cross_replica
        self.mybn = mybn
        if mybn:
            self.bn = myBN(output_size, self.eps, self.momentum, cross_replica=cross_replica)
        else:
            self.register_buffer('stored_mean', torch.zeros(output_size))
            self.register_buffer('stored_var', torch.ones(output_size))

    def forward(self, x, y=None):
        if self.mybn:
            gain = self.gain.view(1, -1, 1, 1).to(x.dtype)
            bias = self.bias.view(1, -1, 1, 1).to(x.dtype)
            return self.bn(x, gain=gain, bias=bias)
        if self.cross_replica:
            out = sync_batch_norm(x, self.stored_mean, self.stored_var, self.training,
                                  self.momentum, self.eps)
            return out * self.gain.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias,
                            self.training, self.momentum, self.eps)


# ----------------------------------------------------------------------------
# Residual blocks.

class GBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv with a learnable 1x1 shortcut."""

    def __init__(self, in_channels, out_channels, which_conv=nn.Conv2d, which_bn=bn,
                 activation=None, upsample=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.which_conv, self.which_bn = which_conv, which_bn
        self.activation = activation
        self.upsample = upsample
        self.conv1 = self.which_conv(self.in_channels, self.out_channels)
        self.conv2 = self.which_conv(self.out_channels, self.out_channels)
        self.learnable_sc = in_channels != out_channels or upsample
        if self.learnable_sc:
            self.conv_sc = self.which_conv(in_channels, out_channels, kernel_size=1, padding=0)
        self.bn1 = self.which_bn(in_channels)
        self.bn2 = self.which_bn(out_channels)

    def forward(self, x, y):
        h = self.activation(self.bn1(x, y))
        if self.upsample:
            h = self.upsample(h)
            x = self.upsample(x)
        h = self.conv1(h)
        h = self.activation(self.bn2(h, y))
        h = self.conv2(h)
        if self.learnable_sc:
            x = self.conv_sc(x)
        return h + x


class DBlock(nn.Module):
    """Residual D block; the first block of D skips the pre-activation."""

    def __init__(self, in_channels, out_channels, which_conv=SNConv2d, wide=True,
                 preactivation=False, activation=None, downsample=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = self.out_channels if wide else self.in_channels
        self.which_conv = which_conv
        self.preactivation = preactivation
        self.activation = activation
        self.downsample = downsample
        self.conv1 = self.which_conv(self.in_channels, self.hidden_channels)
        self.conv2 = self.which_conv(self.hidden_channels, self.out_channels)
        self.learnable_sc = bool(in_channels != out_channels or downsample)
        if self.learnable_sc:
            self.conv_sc = self.which_conv(in_channels, out_channels, kernel_size=1, padding=0)

    def shortcut(self, x):
        if self.preactivation:
            if self.learnable_sc:
                x = self.conv_sc(x)
            if self.downsample:
                x = self.downsample(x)
        else:
            if self.downsample:
                x = self.downsample(x)
            if self.learnable_sc:
                x = self.conv_sc(x)
        return x

    def forward(self, x):
        # Out-of-place ReLU: an in-place one would also rectify x, which the shortcut reads.
        h = F.relu(x) if self.preactivation else x
        h = self.conv1(h)
        h = self.conv2(self.activation(h))
        if self.downsample:
            h = self.downsample(h)
        return h + self.shortcut(x)


class identity(nn.Module):
    def forward(self, input):
        return input


# ----------------------------------------------------------------------------
# Initialisation.

INIT_STYLES = ('ortho', 'N02', 'glorot', 'xavier')


def init_weights(module, style):
    """Initialise every conv, linear and embedding weight of module; returns the count."""
    if style not in INIT_STYLES:
        raise ValueError(f"unknown init {style!r}: use {', '.join(INIT_STYLES)}")
    count = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            if style == 'ortho':
                nn.init.orthogonal_(m.weight)
            elif style == 'N02':
                nn.init.normal_(m.weight, 0, 0.02)
            else:  # glorot, xavier
                nn.init.xavier_uniform_(m.weight)
            count += sum(p.numel() for p in m.parameters())
    return count
