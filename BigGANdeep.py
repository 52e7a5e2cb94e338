"""BigGAN-deep: bottleneck residual blocks, G_depth/D_depth blocks per stage, z joined to y."""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

import BigGAN
import layers
from BigGAN import G_D  # noqa: F401  (same public names as BigGAN.py)


class GBlock(nn.Module):
    """BN-ReLU-1x1 down, two 3x3 convs, 1x1 up; the shortcut drops channels instead of a conv."""

    def __init__(self, in_channels, out_channels, which_conv=nn.Conv2d, which_bn=layers.bn,
                 activation=None, upsample=None, channel_ratio=4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = self.in_channels // channel_ratio
        self.which_conv, self.which_bn = which_conv, which_bn
        self.activation = activation
        self.conv1 = self.which_conv(self.in_channels, self.hidden_channels,
                                     kernel_size=1, padding=0)
        self.conv2 = self.which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = self.which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = self.which_conv(self.hidden_channels, self.out_channels,
                                     kernel_size=1, padding=0)
        self.bn1 = self.which_bn(self.in_channels)
        self.bn2 = self.which_bn(self.hidden_channels)
        self.bn3 = self.which_bn(self.hidden_channels)
        self.bn4 = self.which_bn(self.hidden_channels)
        self.upsample = upsample

    def forward(self, x, y):
        h = self.conv1(self.activation(self.bn1(x, y)))   # (N, C_in/4, H, W)
        h = self.activation(self.bn2(h, y))
        if self.in_channels != self.out_channels:
            x = x[:, :self.out_channels]
        if self.upsample:
            h = self.upsample(h)
            x = self.upsample(x)
        h = self.conv2(h)
        h = self.conv3(self.activation(self.bn3(h, y)))
        h = self.conv4(self.activation(self.bn4(h, y)))  # (N, C_out, H', W')
        return h + x


class DBlock(nn.Module):
    """1x1 down, two 3x3 convs, downsample, 1x1 up; the shortcut appends learned channels."""

    def __init__(self, in_channels, out_channels, which_conv=layers.SNConv2d, wide=True,
                 preactivation=True, activation=None, downsample=None, channel_ratio=4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = self.out_channels // channel_ratio
        self.which_conv = which_conv
        self.preactivation = preactivation
        self.activation = activation
        self.downsample = downsample
        self.conv1 = self.which_conv(self.in_channels, self.hidden_channels,
                                     kernel_size=1, padding=0)
        self.conv2 = self.which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = self.which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = self.which_conv(self.hidden_channels, self.out_channels,
                                     kernel_size=1, padding=0)
        self.learnable_sc = in_channels != out_channels
        if self.learnable_sc:
            self.conv_sc = self.which_conv(in_channels, out_channels - in_channels,
                                           kernel_size=1, padding=0)

    def shortcut(self, x):
        if self.downsample:
            x = self.downsample(x)
        if self.learnable_sc:
            x = torch.cat([x, self.conv_sc(x)], 1)
        return x

    def forward(self, x):
        # Out-of-place ReLU: the shortcut reads x.
        h = self.conv1(F.relu(x))
        h = self.conv2(self.activation(h))
        h = self.conv3(self.activation(h))
        h = self.activation(h)
        if self.downsample:
            h = self.downsample(h)
        h = self.conv4(h)
        return h + self.shortcut(x)


G_arch = BigGAN.G_arch

# (in, out, stages downsampling) multipliers of D_ch per resolution; no separate RGB entry.
D_CHANNELS = {
    32:  ([4, 4, 4],              [4, 4, 4],              2),
    64:  ([1, 2, 4, 8],           [2, 4, 8, 16],          4),
    128: ([1, 2, 4, 8, 16],       [2, 4, 8, 16, 16],      5),
    256: ([1, 2, 4, 8, 8, 16],    [2, 4, 8, 8, 16, 16],   6),
    512: ([1, 1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16], 7),
}


def D_arch(ch=64, attention='64', ksize='333333', dilation='111111'):
    """Per-resolution deep-D architecture, as the release's BigGANdeep.D_arch returns it."""
    return BigGAN.D_arch_from(D_CHANNELS, ch, attention, rgb_input=False)


class Generator(BigGAN.Generator):
    """G_depth blocks per stage; with hier the whole z joins the shared embedding."""

    def __init__(self, G_depth=2, **kwargs):
        self.G_depth = G_depth
        super().__init__(**kwargs)

    def z_slots(self):
        return 1, 0

    def bn_input_size(self):
        if not self.G_shared:
            return self.n_classes
        return self.shared_dim + (self.dim_z if self.hier else 0)

    def linear_input_size(self):
        return self.dim_z + (self.shared_dim if self.hier else 0)

    def make_blocks(self, **kwargs):
        """A flat list of single-GBlock stages; attention follows the last block of a stage."""
        blocks = []
        for index in range(len(self.arch['out_channels'])):
            in_ch = self.arch['in_channels'][index]
            for g_index in range(self.G_depth):
                last = g_index == self.G_depth - 1
                blocks.append([GBlock(
                    in_channels=in_ch,
                    out_channels=in_ch if g_index == 0 else self.arch['out_channels'][index],
                    which_conv=self.which_conv,
                    which_bn=self.which_bn,
                    activation=self.activation,
                    upsample=(functools.partial(F.interpolate, scale_factor=2)
                              if self.arch['upsample'][index] and last else None))])
            if self.arch['attention'][self.arch['resolution'][index]]:
                blocks[-1].append(layers.Attention(self.arch['out_channels'][index],
                                                   self.which_conv))
        return [nn.ModuleList(block) for block in blocks]

    def forward(self, z, y):
        """z: (N, dim_z); y: (N, shared_dim) already passed through self.shared."""
        if self.hier:
            z = torch.cat([y, z], 1)  # (N, shared_dim + dim_z)
            y = z
        h = self.linear(z)
        h = h.view(h.size(0), -1, self.bottom_width, self.bottom_width)
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h, y)
        return torch.tanh(self.output_layer(h))


class Discriminator(BigGAN.Discriminator):
    """An input conv, then D_depth bottleneck blocks per stage (the first one downsampling)."""
    make_arch = staticmethod(D_arch)

    def __init__(self, D_depth=2, **kwargs):
        self.D_depth = D_depth
        super().__init__(**kwargs)

    def make_blocks(self, **kwargs):
        self.input_conv = self.which_conv(3, self.arch['in_channels'][0])
        blocks = []
        for index, out_ch in enumerate(self.arch['out_channels']):
            block = [DBlock(in_channels=self.arch['in_channels'][index] if d_index == 0 else out_ch,
                            out_channels=out_ch,
                            which_conv=self.which_conv,
                            wide=self.D_wide,
                            activation=self.activation,
                            preactivation=True,
                            downsample=(nn.AvgPool2d(2) if self.arch['downsample'][index]
                                        and d_index == 0 else None))
                     for d_index in range(self.D_depth)]
            if self.arch['attention'][self.arch['resolution'][index]]:
                block.append(layers.Attention(out_ch, self.which_conv))
            blocks.append(nn.ModuleList(block))
        return blocks

    def forward(self, x, y=None):
        return super().forward(self.input_conv(x), y)
