"""BigGAN generator and discriminator (Brock et al. 2018), with the release's state-dict layout."""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

import layers
from DiffAugment_pytorch import DiffAugment
from flags import ConfigError

# Channel multipliers of G_ch / D_ch per resolution: G stages go in[i] -> out[i], upsampling x2.
G_CHANNELS = {
    32:  ([4, 4, 4],                [4, 4, 4]),
    64:  ([16, 16, 8, 4],           [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2],        [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2],     [16, 8, 8, 4, 2, 1]),
    512: ([16, 16, 8, 8, 4, 2, 1],  [16, 8, 8, 4, 2, 1, 1]),
}
# D mirrors G with average-pool downsampling; (in after the RGB input, out, stages downsampling).
D_CHANNELS = {
    32:  ([4, 4, 4],                [4, 4, 4, 4],              2),
    64:  ([1, 2, 4, 8],             [1, 2, 4, 8, 16],          4),
    128: ([1, 2, 4, 8, 16],         [1, 2, 4, 8, 16, 16],      5),
    256: ([1, 2, 4, 8, 8, 16],      [1, 2, 4, 8, 8, 16, 16],   6),
    512: ([1, 1, 2, 4, 8, 8, 16],   [1, 1, 2, 4, 8, 8, 16, 16], 7),
}


def attn_resolutions(attention):
    """'32_64' -> {32, 64}; '0' -> no attention."""
    return {int(item) for item in str(attention).split('_') if item}


def G_arch(ch=64, attention='64', ksize='333333', dilation='111111'):
    """Per-resolution G architecture, as the release's G_arch returns it."""
    arch, want = {}, attn_resolutions(attention)
    for res, (ins, outs) in G_CHANNELS.items():
        resolution = [8 * 2 ** i for i in range(len(ins))]
        arch[res] = {'in_channels': [ch * m for m in ins],
                     'out_channels': [ch * m for m in outs],
                     'upsample': [True] * len(ins),
                     'resolution': resolution,
                     'attention': {2 ** i: 2 ** i in want for i in range(3, len(ins) + 3)}}
    return arch


def D_arch_from(table, ch, attention, rgb_input=True):
    """A per-resolution D architecture from a (in, out, stages downsampling) table."""
    arch, want = {}, attn_resolutions(attention)
    for res, (ins, outs, n_down) in table.items():
        down = [True] * n_down + [False] * (len(outs) - n_down)
        resolution, r = [], res
        for d in down:
            r = r // 2 if d else r
            resolution.append(r)
        if res == 32:
            # The release's 32px tables say 16 for every stage, and attention follows them.
            resolution = [16] * len(outs)
        arch[res] = {'in_channels': ([3] if rgb_input else []) + [ch * m for m in ins],
                     'out_channels': [ch * m for m in outs],
                     'downsample': down,
                     'resolution': resolution,
                     'attention': {2 ** i: 2 ** i in want for i in range(2, 10)}}
    return arch


def D_arch(ch=64, attention='64', ksize='333333', dilation='111111'):
    """Per-resolution D architecture, as the release's D_arch returns it."""
    return D_arch_from(D_CHANNELS, ch, attention)


def sn_layers(param, num_svs, num_itrs, eps):
    """(which_conv, which_linear, which_embedding) for SN or plain parameterisation."""
    if param == 'SN':
        sn = dict(num_svs=num_svs, num_itrs=num_itrs, eps=eps)
        return (functools.partial(layers.SNConv2d, kernel_size=3, padding=1, **sn),
                functools.partial(layers.SNLinear, **sn),
                functools.partial(layers.SNEmbedding, **sn))
    return functools.partial(nn.Conv2d, kernel_size=3, padding=1), nn.Linear, nn.Embedding


def make_adam(module, lr, B1, B2, eps):
    """The release keeps the optimizer on the module as `.optim`."""
    # foreach (not fused): fused Adam rounds differently and would break the float32 default.
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(B1, B2), weight_decay=0,
                            eps=eps, foreach=True)


class Generator(nn.Module):
    make_arch = staticmethod(G_arch)

    def __init__(self,
                 G_ch=64,                 # Channel width multiplier.
                 dim_z=128,               # Latent size; with hier, a multiple of the chunks.
                 bottom_width=4,          # Spatial size of the first feature map.
                 resolution=128,          # Output resolution.
                 G_kernel_size=3,         # Unused; kept for the release's signature.
                 G_attn='64',             # Attention resolutions, '_'-separated; '0' none.
                 n_classes=1000,          # Number of classes.
                 num_G_SVs=1,             # Singular values tracked by SN.
                 num_G_SV_itrs=1,         # Power iterations per forward.
                 G_shared=True,           # One shared class embedding feeding every ccbn.
                 shared_dim=0,            # Its size; 0 means dim_z.
                 hier=False,              # Split z across the stages.
                 cross_replica=False,     # Batch statistics over every DDP rank.
                 mybn=False,              # The release's own BN (standing stats).
                 G_activation=nn.ReLU(inplace=False),
                 G_lr=5e-5, G_B1=0.0, G_B2=0.999, adam_eps=1e-8,
                 BN_eps=1e-5, SN_eps=1e-12,
                 G_mixed_precision=False, G_fp16=False,  # Accepted; --amp replaces them.
                 G_init='ortho',          # ortho, N02, glorot/xavier.
                 skip_init=False,         # Leave torch's default init (resuming, sampling).
                 no_optim=False,          # No Adam (the EMA copy).
                 G_param='SN',            # SN or plain layers.
                 norm_style='bn',         # bn, in, gn, nonorm.
                 **kwargs):
        super().__init__()
        self.ch = G_ch
        self.dim_z = dim_z
        self.bottom_width = bottom_width
        self.resolution = resolution
        self.attention = G_attn
        self.n_classes = n_classes
        self.G_shared = G_shared
        self.shared_dim = shared_dim if shared_dim > 0 else dim_z
        self.hier = hier
        self.activation = G_activation
        self.init = G_init
        self.fp16 = False
        self.arch = self.make_arch(self.ch, self.attention)[resolution]
        if hier and not G_shared:
            # The BNs take z's chunks joined to the shared class embedding; without one, the
            # labels themselves would be joined to z, and the first forward fails.
            raise ConfigError('--hier joins z to the shared class embedding: add --G_shared')

        self.num_slots, self.z_chunk_size = self.z_slots()
        if self.num_slots > 1 and not self.z_chunk_size:
            raise ConfigError(f'--dim_z {dim_z} is fewer than the {self.num_slots} chunks '
                              f'--hier splits z into at {resolution} px: use --dim_z '
                              f'{self.num_slots} or more')
        if self.z_chunk_size:
            self.dim_z = self.z_chunk_size * self.num_slots  # e.g. 120 stays 120 at 128px

        self.which_conv, self.which_linear, _ = sn_layers(G_param, num_G_SVs, num_G_SV_itrs,
                                                          SN_eps)
        self.which_embedding = nn.Embedding
        bn_linear = (functools.partial(self.which_linear, bias=False) if self.G_shared
                     else self.which_embedding)
        self.which_bn = functools.partial(
            layers.ccbn, which_linear=bn_linear, cross_replica=cross_replica, mybn=mybn,
            input_size=self.bn_input_size(), norm_style=norm_style, eps=BN_eps)

        self.shared = (self.which_embedding(n_classes, self.shared_dim) if G_shared
                       else layers.identity())
        self.linear = self.which_linear(self.linear_input_size(),
                                        self.arch['in_channels'][0] * self.bottom_width ** 2)
        self.blocks = nn.ModuleList(self.make_blocks(**kwargs))
        # The release's output BN takes the default eps, not BN_eps.
        self.output_layer = nn.Sequential(
            layers.bn(self.arch['out_channels'][-1], cross_replica=cross_replica, mybn=mybn),
            self.activation,
            self.which_conv(self.arch['out_channels'][-1], 3))

        if not skip_init:
            self.param_count = layers.init_weights(self, self.init)
        if not no_optim:
            self.lr, self.B1, self.B2, self.adam_eps = G_lr, G_B1, G_B2, adam_eps
            self.optim = make_adam(self, G_lr, G_B1, G_B2, adam_eps)

    def z_slots(self):
        """(slots, chunk size): with hier, one chunk of z for the linear layer and one per stage."""
        if self.hier:
            slots = len(self.arch['in_channels']) + 1
            return slots, self.dim_z // slots
        return 1, 0

    def bn_input_size(self):
        """Width of the ccbn conditioning vector."""
        return self.shared_dim + self.z_chunk_size if self.G_shared else self.n_classes

    def linear_input_size(self):
        """Width of the first linear layer's input."""
        return self.dim_z // self.num_slots

    def make_blocks(self, **kwargs):
        """One ModuleList per stage: a GBlock, plus attention at the chosen resolutions."""
        blocks = []
        for index, out_ch in enumerate(self.arch['out_channels']):
            block = [layers.GBlock(in_channels=self.arch['in_channels'][index],
                                   out_channels=out_ch,
                                   which_conv=self.which_conv,
                                   which_bn=self.which_bn,
                                   activation=self.activation,
                                   upsample=(functools.partial(F.interpolate, scale_factor=2)
                                             if self.arch['upsample'][index] else None))]
            if self.arch['attention'][self.arch['resolution'][index]]:
                block.append(layers.Attention(out_ch, self.which_conv))
            blocks.append(nn.ModuleList(block))
        return blocks

    def init_weights(self):
        self.param_count = layers.init_weights(self, self.init)

    def forward(self, z, y):
        """z: (N, dim_z); y: (N, shared_dim) already passed through self.shared."""
        if self.hier:
            zs = torch.split(z, self.z_chunk_size, 1)
            z = zs[0]
            ys = [torch.cat([y, item], 1) for item in zs[1:]]  # (N, shared_dim + chunk) each
        else:
            ys = [y] * len(self.blocks)
        h = self.linear(z)
        h = h.view(h.size(0), -1, self.bottom_width, self.bottom_width)  # (N, C, 4, 4)
        for index, blocklist in enumerate(self.blocks):
            for block in blocklist:
                h = block(h, ys[index])
        return torch.tanh(self.output_layer(h))  # (N, 3, res, res)


class Discriminator(nn.Module):
    make_arch = staticmethod(D_arch)

    def __init__(self,
                 D_ch=64,                 # Channel width multiplier.
                 D_wide=True,             # Hidden width = out (SA-GAN/BigGAN) rather than in.
                 resolution=128,          # Input resolution.
                 D_kernel_size=3,         # Unused; kept for the release's signature.
                 D_attn='64',             # Resolutions with self-attention; '0' none.
                 n_classes=1000,          # Number of classes (projection embedding rows).
                 num_D_SVs=1,             # Singular values tracked by SN.
                 num_D_SV_itrs=1,         # Power iterations per forward.
                 D_activation=nn.ReLU(inplace=False),
                 D_lr=2e-4, D_B1=0.0, D_B2=0.999, adam_eps=1e-8,
                 SN_eps=1e-12,
                 output_dim=1,            # Unconditional logits per sample.
                 D_mixed_precision=False, D_fp16=False,  # Accepted; --amp replaces them.
                 D_init='ortho',          # ortho, N02, glorot/xavier.
                 skip_init=False,         # Leave torch's default init.
                 D_param='SN',            # SN or plain layers.
                 **kwargs):
        super().__init__()
        self.ch = D_ch
        self.D_wide = D_wide
        self.resolution = resolution
        self.attention = D_attn
        self.n_classes = n_classes
        self.activation = D_activation
        self.init = D_init
        self.fp16 = False
        self.arch = self.make_arch(self.ch, self.attention)[resolution]
        self.which_conv, self.which_linear, self.which_embedding = sn_layers(
            D_param, num_D_SVs, num_D_SV_itrs, SN_eps)

        self.blocks = nn.ModuleList(self.make_blocks(**kwargs))
        self.linear = self.which_linear(self.arch['out_channels'][-1], output_dim)
        self.embed = self.which_embedding(self.n_classes, self.arch['out_channels'][-1])

        if not skip_init:
            self.param_count = layers.init_weights(self, self.init)
        self.lr, self.B1, self.B2, self.adam_eps = D_lr, D_B1, D_B2, adam_eps
        self.optim = make_adam(self, D_lr, D_B1, D_B2, adam_eps)

    def make_blocks(self, **kwargs):
        """One ModuleList per stage: a DBlock, plus attention at the chosen resolutions."""
        blocks = []
        for index, out_ch in enumerate(self.arch['out_channels']):
            block = [layers.DBlock(in_channels=self.arch['in_channels'][index],
                                   out_channels=out_ch,
                                   which_conv=self.which_conv,
                                   wide=self.D_wide,
                                   activation=self.activation,
                                   preactivation=(index > 0),
                                   downsample=(nn.AvgPool2d(2) if self.arch['downsample'][index]
                                               else None))]
            if self.arch['attention'][self.arch['resolution'][index]]:
                block.append(layers.Attention(out_ch, self.which_conv))
            blocks.append(nn.ModuleList(block))
        return blocks

    def init_weights(self):
        self.param_count = layers.init_weights(self, self.init)

    def forward(self, x, y=None):
        h = x
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h)
        h = torch.sum(self.activation(h), [2, 3])                    # (N, C) global sum pool
        out = self.linear(h)                                          # (N, 1)
        return out + torch.sum(self.embed(y) * h, 1, keepdim=True)   # + projection


def augment(images, policy):
    """DiffAugment(images, policy), handed back in the memory format it came in
    (DiffAugment returns standard-contiguous tensors)."""
    out = DiffAugment(images, policy)
    if out is not images and not images.is_contiguous() and images.is_contiguous(
            memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def consistency_reals(x_aug, x, CR_augment):
    """The reals D is asked to score like x_aug under --CR (the DiffAugment fork's rule): x_aug
    randomly h-flipped per sample if CR_augment starts with 'flip,', then DiffAugment'ed with
    the rest of CR_augment; the un-augmented reals x when CR_augment is empty."""
    if not CR_augment:
        return x
    if CR_augment.startswith('flip,'):
        flip = torch.randint(0, 2, size=[x_aug.size(0), 1, 1, 1], device=x_aug.device) > 0
        x_aug = torch.where(flip, x_aug.flip(3), x_aug)
    return augment(x_aug, CR_augment.replace('flip,', ''))


def _cat(tensors):
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, 0)


class G_D(nn.Module):
    """G and D in one module, so one DataParallel/DDP wrapper covers the whole step."""

    def __init__(self, G, D):
        super().__init__()
        self.G = G
        self.D = D

    def forward(self, z, gy, x=None, dy=None, train_G=False, return_G_z=False, split_D=False,
                policy=False, CR=False, CR_augment=None):
        """D's outputs on G(z) (z None: none) and on the reals x: (D_fake, D_real) with both,
        (D_fake, D_real, D_real_CR) with CR, else the one tensor ((D_fake, G_z) if return_G_z).

        policy (--DiffAugment) augments what D sees with one DiffAugment call over fakes then
        reals; split_D splits the D pass after that call, so the draws are the same.
        """
        G_z = None
        if z is not None:
            # G and D may be DistributedDataParallel wrappers; `.module` is the network inside.
            G_net = getattr(self.G, 'module', self.G)
            with torch.set_grad_enabled(train_G):
                G_z = self.G(z, G_net.shared(gy))
            if x is not None:
                G_z = G_z.to(x.dtype)
        # D is not trained in the G step, so it runs outside its DDP wrapper: no gradient sync.
        D = getattr(self.D, 'module', self.D) if train_G else self.D
        images = [t for t in (G_z, x) if t is not None]
        classes = [t for t in (gy if G_z is not None else None, dy) if t is not None]
        sizes = [t.shape[0] for t in images]
        D_input, D_class = _cat(images), _cat(classes)
        if policy:
            # Each sample gets its own draws, the fakes' first in every drawn tensor.
            D_input = augment(D_input, policy)
        if CR:
            D_input = torch.cat([D_input, consistency_reals(D_input[sizes[0]:], x, CR_augment)])
            D_class = torch.cat([D_class, dy])
            sizes.append(x.shape[0])
        if split_D and len(sizes) > 1:
            # Fakes, then the rest, in separate passes. DDP allows one wrapped call per
            # backward: the real pass carries the sync (both passes' gradients reach it, as
            # they sum before the hooks fire).
            split = [sizes[0], sum(sizes[1:])]
            (fake_in, real_in), (fake_cls, real_cls) = (torch.split(D_input, split),
                                                        torch.split(D_class, split))
            D_out = torch.cat([getattr(D, 'module', D)(fake_in, fake_cls), D(real_in, real_cls)])
        else:
            # One D pass over fake then real: D has no batch statistics, so batching is free.
            D_out = D(D_input, D_class)
        if G_z is not None and x is not None:
            return torch.split(D_out, sizes)  # D_fake, D_real[, D_real_CR]
        return (D_out, G_z) if return_G_z else D_out
