"""DeepMind's released generators as checkpoints of this codebase.

BigGAN-deep from HuggingFace's pytorch-pretrained-BigGAN files (a folder with config.json and
pytorch_model.bin), for one truncation:

    python convert_pretrained.py --hf_dir biggan-deep-128 --truncation 0.4 \\
        --weights_root weights --experiment_name deep128_t0.4

BigGAN from a downloaded TF-Hub module (the folder holding variables/), as the release's
TFHub/converter.py maps it, without TensorFlow:

    python convert_pretrained.py --tfhub_dir biggan-128 -r 128 --experiment_name biggan128

Both write weights_root/NAME/{G.pth, G_ema.pth, state_dict.pth} (the model flags in
state_dict.pth, for sample.py --config_from_name) and print the sample.py command to use.
Neither needs HuggingFace's package or TensorFlow: plain JSON, checkpoints.torch_load
and tf_bundle's reader.
"""
import flags  # first: a Ctrl-C during the slow imports below is one line (flags.py)

# isort: split
import functools
import glob
import json
import math
import os
import re
import shlex

import torch

import BigGAN
import layers
import utils
from checkpoints import (
    CHECKPOINT_FILES,
    checkpoint_path,
    first_nonfinite,
    initial_state,
    plain_config,
    torch_load,
)
from datasets import DATASETS
from files import (
    atomic_save_set,
    check_declared,
    check_name,
    file_size,
    open_regular,
    own_folder,
    read_bounded,
)
from flags import one_line

# pytorch-pretrained-BigGAN's BigGANConfig defaults (deep-128): a config.json overrides them.
HF_DEFAULTS = {'output_dim': 128, 'z_dim': 128, 'class_embed_dim': 128, 'channel_width': 128,
               'num_classes': 1000, 'attention_layer_position': 8, 'eps': 1e-4, 'n_stats': 51,
               'layers': [[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8],
                          [False, 8, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2],
                          [False, 2, 2], [True, 2, 1]]}
# The release's TFHub/converter.py: attention resolution per module resolution, EMA suffix.
TFHUB_ATTENTION = {128: 64, 256: 128, 512: 64}
TFHUB_EMA = '/ema_b999900'
# config.json is a few hundred bytes; a larger file is not one.
MAX_CONFIG_BYTES = 1 << 20
# How closely this codebase's spectral norm must reproduce the source's sigma (relative).
SIGMA_RTOL = 1e-5


# ----------------------------------------------------------------------------
# Pieces both sources share.

def hf_levels(truncation, n_stats):
    """[(level, weight)] of the BN statistics HF uses at a truncation, by HF's own arithmetic:
    (f, s) = modf(truncation / (1 / (n_stats - 1))) in double precision; f = 0 takes level s,
    else f of level s and 1 - f of level s + 1 (the reverse of linear interpolation)."""
    coef, start = math.modf(truncation / (1.0 / (n_stats - 1)))
    start = int(start)
    if coef == 0.0:
        return [(start, 1.0)]
    return [(start, coef), (start + 1, 1 - coef)]


def level_stats(stats, truncation):
    """One (C,) row from per-truncation (S, C) statistics, computed in float32 as HF does."""
    levels = hf_levels(truncation, stats.shape[0])
    if levels[-1][0] >= stats.shape[0]:
        raise flags.ConfigError(f'truncation {truncation:g} needs statistics level '
                                f'{levels[-1][0]}; the file has {stats.shape[0]}')
    if len(levels) == 1:
        return stats[levels[0][0]]
    (s, f), (s1, g) = levels
    return stats[s] * f + stats[s1] * g


def project_sigma(weight, u0, source):
    """The sigma this codebase's SN computes in eval mode from u0 (one power step, no update),
    in float64; source names the layer when weight and u0 cannot be an SN layer's."""
    if weight.dim() < 2 or not weight.numel() or u0.numel() != weight.shape[0]:
        raise flags.ConfigError(f'{source}: a weight of shape {tuple(weight.shape)} with a '
                                f'spectral-norm vector u of {u0.numel()} values is no '
                                f'spectral-norm layer (u must have one value per output)')
    svs, _, _ = layers.power_iteration(weight.double().flatten(1), [u0.double().clone()],
                                       update=False)
    return float(svs[0])


def u0_for(weight, v):
    """A u0 whose power step lands on v: W^T u0 = v by least squares in float64.

    HF's v = normalize(W^T u) lies in W's row space, so the solution is exact; the step then
    gives sigma = |W v|, which is torch's eval sigma u . (W v) because HF's u = normalize(W v).
    """
    w = weight.double().flatten(1)
    return torch.linalg.lstsq(w.t(), v.double().unsqueeze(1)).solution.t()  # (1, out)


def swap_halves(t, first):
    """Columns [a (first), b] -> [b, a]: the source's [z, class] input order to ours."""
    return torch.cat([t[:, first:], t[:, :first]], 1)


def channels_first_rows(t, channels, side=4):
    """Rows in TF's (h, w, c) order -> ours (c, h, w): the first linear layer's outputs."""
    return t.reshape(side * side, channels, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


class StateDictBuilder:
    """This codebase's G state dict being filled in, checked against the G built from the
    flags (every key set, every shape right)."""

    def __init__(self, G, sn):
        self.template = G.state_dict()
        self.sn = sn
        self.out = {}

    def put(self, key, value, source):
        want = tuple(self.template[key].shape)
        if tuple(value.shape) != want:
            raise flags.ConfigError(f'{source} has shape {tuple(value.shape)} where this model '
                                    f'needs {want} for {key}: the weights do not match their '
                                    f'config')
        self.out[key] = value.detach().to(self.template[key].dtype).clone().contiguous()

    def put_sn(self, key, weight, u0, sigma, source):
        """An SN layer whose normalised weight must be weight / sigma: with SN, weight and a
        u0 from which our power step gives sigma; plain (baked), weight / sigma."""
        if not sigma > 0:
            raise flags.ConfigError(f'{source} has a non-positive spectral norm estimate {sigma:g}')
        if not self.sn:
            self.put(key + '.weight', weight.double() / sigma, source)
            return
        ours = project_sigma(weight, u0, source)
        if abs(ours - sigma) > SIGMA_RTOL * sigma:
            raise flags.ConfigError(f'{source}: its stored spectral-norm vectors do not satisfy '
                                    f"u = normalize(W v) as HF's files do (sigma {sigma:g}, "
                                    f'ours {ours:g}); convert with --G_param plain')
        self.put(key + '.weight', weight, source)
        self.put(key + '.u0', u0.reshape(1, -1), source)
        self.put(key + '.sv0', torch.tensor([sigma]), source)

    def done(self):
        missing = [k for k in self.template if k not in self.out]
        if missing:
            raise RuntimeError(f"conversion left {', '.join(missing[:5])} unset")
        return self.out


def build_config(flags, source=None):
    """The training config these flags give (what state_dict.pth stores) and its G.

    With source, (path, bytes), the G is first built on the meta device (nothing allocated)
    and refused unless its weights fit in what the source files hold and in memory: widths
    read off a file build a model only as large as the file."""
    config = utils.prepare_config(vars(utils.prepare_parser().parse_args(flags)))
    if source is not None:
        check_declared(utils.weights_nbytes(config), 'the generator its shapes describe',
                       source[0], limit=source[1])
    G = utils.build_sampling_G(config)
    return config, G


def dataset_for(resolution):
    """A dataset entry of the right resolution where the table has one (512px has none)."""
    name = f'I{resolution}_hdf5'
    return name if name in DATASETS else 'I128_hdf5'


def checkpoint_files(folder):
    """The checkpoint files (any set, any suffix) in folder."""
    pattern = re.compile(rf"^({'|'.join(CHECKPOINT_FILES)})(_[\w]+)?\.pth$")
    return sorted(f for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                  if pattern.match(f))


def save_checkpoint(state, config, weights_root, experiment_name, info, overwrite=False):
    """G.pth and G_ema.pth (the same weights) and state_dict.pth, written together atomically.

    An experiment folder already holding checkpoint files is refused unless overwrite, which
    replaces them all (no trained D or optimizer file is left beside the converted G)."""
    folder = os.path.join(weights_root, experiment_name)
    old = checkpoint_files(folder)
    if old and not overwrite:
        raise flags.ConfigError(f"{folder} already holds checkpoint files ({', '.join(old[:3])}"
                                f"{', ...' if len(old) > 3 else ''}); pick another "
                                f'--experiment_name or pass --overwrite to replace them all')
    bad = first_nonfinite({'G': state})
    if bad is not None:
        raise flags.ConfigError(f'not writing {folder}: the converted weight {bad} is NaN or '
                                f'Inf; the source files are damaged')
    own_folder(weights_root, experiment_name)
    path = functools.partial(checkpoint_path, weights_root, experiment_name)
    meta = {**initial_state(plain_config(config)), 'pretrained': info}
    items = [(state, path('G')), (state, path('G_ema')), (meta, path('state_dict'))]
    atomic_save_set(items)
    # Removed only once the new set is whole: a crash before leaves it plus stale extras.
    written = {os.path.basename(p) for _, p in items}
    for name in old:
        if name not in written:
            os.remove(os.path.join(folder, name))


# ----------------------------------------------------------------------------
# HuggingFace's BigGAN-deep.

def read_hf(folder):
    """(config with HF's defaults filled in and checked, state dict) of an HF model folder."""
    paths = [os.path.join(folder, name) for name in ('config.json', 'pytorch_model.bin')]
    for path in paths:
        # A FIFO, a device or a link to one is there, and not the file: open_regular says so.
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{path} is missing: --hf_dir takes a folder with HF's "
                                    f'config.json and pytorch_model.bin')
        open_regular(path, os.path.basename(path)).close()
    with open_regular(paths[0], 'config.json') as f:
        if file_size(f) > MAX_CONFIG_BYTES:
            raise flags.ConfigError(f'{paths[0]} holds {file_size(f)} bytes; an HF config is '
                                    f'a few hundred (at most {MAX_CONFIG_BYTES} are read)')
        text = read_bounded(f, file_size(f), 'config.json', paths[0])
    try:
        loaded = json.loads(text.decode('utf-8'))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # ValueError: bad JSON, or an integer of more digits than Python converts
        raise flags.ConfigError(f'{paths[0]} is not a JSON object: {one_line(e)[:200]}'
                                ) from None
    if not isinstance(loaded, dict):
        raise flags.ConfigError(f'{paths[0]} holds a JSON {type(loaded).__name__}, not an '
                                f"object of HF's BigGANConfig fields")
    cfg = check_hf_config({**HF_DEFAULTS, **loaded}, paths[0])
    state = torch_load(paths[1])  # tensors and plain data only, or one line naming the file
    if not isinstance(state, dict):
        raise flags.ConfigError(f'{paths[1]} holds a {type(state)}, not a state dict')
    return cfg, state


def check_hf_config(cfg, path):
    """cfg if every field the conversion reads has HF's type and a usable value; else one
    ConfigError naming the field. Sizes are bounded later, against the weights' shapes and
    the memory a model of them takes (check_hf_state, build_config)."""
    def bad(key, want):
        raise flags.ConfigError(f'{path}: {key} is {ascii(cfg[key])[:80]}; it must be {want}')

    def is_int(value, low):
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    for key, low in (('z_dim', 1), ('class_embed_dim', 1), ('channel_width', 1),
                     ('num_classes', 1), ('attention_layer_position', 0), ('n_stats', 2),
                     ('output_dim', 1)):
        if not is_int(cfg[key], low):
            bad(key, f'an integer of at least {low}')
    eps = cfg['eps']
    if (not isinstance(eps, (int, float)) or isinstance(eps, bool)
            or not (math.isfinite(eps) and eps > 0)):
        bad('eps', 'a positive finite number')
    layers = cfg['layers']
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(layer, list) and len(layer) == 3
                       and isinstance(layer[0], bool) and is_int(layer[1], 1)
                       and is_int(layer[2], 1) for layer in layers)):
        bad('layers', 'a non-empty list of [upsample (true/false), in, out] with positive '
                      'integer channel factors')
    return cfg


def check_hf_state(state, shapes, path):
    """Refuse (one ConfigError) a state dict lacking an entry HF's model with this config
    has, or holding one that is not a floating tensor of the shape the config implies; the
    shapes then bound every width the model is built with by the file's own size."""
    missing = [k for k in shapes if k not in state]
    if missing:
        raise flags.ConfigError(f'{path} lacks {len(missing)} of the entries config.json '
                                f"implies ({', '.join(missing[:3])} ...)")
    for key, shape in shapes.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise flags.ConfigError(f'{path}: {key} is a {kind}, not a floating-point tensor')
        if tuple(value.shape) != shape:
            raise flags.ConfigError(f'{path}: {key} has shape {tuple(value.shape)} where '
                                    f'config.json implies {shape}: the weights do not match '
                                    f'their config')


def hf_arch(cfg):
    """(resolution, blocks per stage, attention resolution or 0) of HF's layer list, refused
    unless BigGANdeep builds the same blocks (a stage: blocks keeping the channels, then one
    changing them and upsampling). cfg has passed check_hf_config."""
    layer_list = [tuple(layer) for layer in cfg['layers']]
    position = cfg['attention_layer_position']
    stages = sum(up for up, _, _ in layer_list)
    depth = len(layer_list) // max(stages, 1)
    resolution = 4 * 2 ** stages
    expected = []
    for ins, outs in zip(*BigGAN.G_CHANNELS.get(resolution, ([], []))):
        expected += [(False, ins, ins)] * (depth - 1) + [(True, ins, outs)]
    if not expected or layer_list != expected:
        would_be = [list(layer) for layer in expected]
        raise flags.ConfigError(f"config.json: layers {ascii(cfg['layers'])[:200]} are not a "
                                f'BigGAN-deep '
                                f'layout this codebase builds (at {resolution}px with {depth} '
                                f'blocks a stage it would be {would_be})')
    if position >= len(layer_list):
        return resolution, depth, 0
    if position < 1 or not layer_list[position - 1][0]:
        raise flags.ConfigError(f'config.json: attention_layer_position {position} is not '
                                f"right after a stage's upsampling layer, where BigGANdeep puts "
                                f'attention')
    return resolution, depth, 4 * 2 ** sum(up for up, _, _ in layer_list[:position])


def hf_shapes(cfg, attention):
    """{entry: shape} of every entry HF's model with this (checked) config has, by HF's
    module definitions: widths channel_width x the layer's factor, conditioning 2 z_dim,
    a GenBlock's middle a quarter of its input, SN modules' u (out,) and v (in x k x k,)."""
    C, d, n_stats = cfg['channel_width'], cfg['z_dim'], cfg['n_stats']
    shapes = {'embeddings.weight': (d, cfg['num_classes'])}

    def sn(name, out, inp, k=None, bias=True):
        shapes[name + '.weight_orig'] = (out, inp) if k is None else (out, inp, k, k)
        shapes[name + '.weight_u'] = (out,)
        shapes[name + '.weight_v'] = (inp * (k or 1) ** 2,)
        if bias:
            shapes[name + '.bias'] = (out,)

    sn('generator.gen_z', 16 * 16 * C, 2 * d)
    for n, (_, ins, outs) in zip(hf_modules(cfg, attention), cfg['layers']):
        widths = [C * ins, C * ins // 4, C * ins // 4, C * ins // 4]
        for k, (width, out) in enumerate(zip(widths, widths[1:] + [C * outs])):
            shapes[f'{n}bn_{k}.running_means'] = shapes[f'{n}bn_{k}.running_vars'] = (
                n_stats, width)
            for part in ('scale', 'offset'):
                sn(f'{n}bn_{k}.{part}', width, 2 * d, bias=False)
            sn(f'{n}conv_{k}', out, width, 1 if k in (0, 3) else 3)
    if attention:
        a = f"generator.layers.{cfg['attention_layer_position']}."
        width = C * cfg['layers'][cfg['attention_layer_position']][1]
        shapes[a + 'gamma'] = (1,)
        for part, out, inp in (('theta', width // 8, width), ('phi', width // 8, width),
                               ('g', width // 2, width), ('o_conv', width, width // 2)):
            sn(f'{a}snconv1x1_{part}', out, inp, 1, bias=False)
    for k in ('weight', 'bias'):
        shapes['generator.bn.' + k] = (C,)
    for k in ('running_means', 'running_vars'):
        shapes['generator.bn.' + k] = (n_stats, C)
    sn('generator.conv_to_rgb', C, C, 3)
    return shapes


def hf_modules(cfg, attention):
    """The HF module prefix of each GenBlock, in order (the attention takes one index)."""
    position = cfg['attention_layer_position']
    return [f'generator.layers.{i + (1 if attention and i >= position else 0)}.'
            for i in range(len(cfg['layers']))]


def hf_flags(cfg, arch, G_param):
    """The flags that build HF's model as this codebase's BigGANdeep."""
    resolution, depth, attention = arch
    eps, d = repr(float(cfg['eps'])), str(int(cfg['z_dim']))
    return ['--model', 'BigGANdeep', '--G_param', G_param,
            '--G_ch', str(int(cfg['channel_width'])), '--G_depth', str(depth),
            '--G_attn', str(attention), '--G_shared', '--hier', '--shared_dim', d, '--dim_z', d,
            '--resolution', str(resolution), '--n_classes', str(int(cfg['num_classes'])),
            '--dataset', dataset_for(resolution), '--BN_eps', eps, '--SN_eps', eps,
            '--num_G_SVs', '1', '--num_G_SV_itrs', '1', '--norm_style', 'bn', '--G_eval_mode',
            '--skip_init']


def hf_sn(state, name):
    """(weight_orig, v, sigma) of one of HF's SN modules; sigma as torch's spectral_norm
    computes it in eval mode: u . (W v) with the stored vectors, no power step."""
    w, u, v = (state[name + s] for s in ('.weight_orig', '.weight_u', '.weight_v'))
    return w, v, float(u.double() @ (w.double().flatten(1) @ v.double()))


def convert_hf(cfg, state, truncation, G_param='SN'):
    """(this codebase's G state dict, config) of an HF BigGAN-deep at one truncation."""
    arch = hf_arch(cfg)
    shapes = hf_shapes(cfg, arch[2])
    check_hf_state(state, shapes, 'pytorch_model.bin')
    held = sum(state[k].numel() * state[k].element_size() for k in shapes)
    config, G = build_config(hf_flags(cfg, arch, G_param), ('pytorch_model.bin', held))
    t = StateDictBuilder(G, sn=G_param == 'SN')
    d, C, eps = int(cfg['z_dim']), int(cfg['channel_width']), float(cfg['eps'])

    def sn(key, name, columns=None, rows=None):
        """HF's SN module `name` as ours at `key`, its inputs and outputs reordered."""
        weight, v, sigma = hf_sn(state, name)
        if columns:
            weight, v = columns(weight), columns(v.unsqueeze(0)).squeeze(0)
        if rows:
            weight = rows(weight)  # u0_for solves for the reordered rows
        t.put_sn(key, weight, u0_for(weight, v), sigma, name)

    def zy(w):
        return swap_halves(w, d)

    t.put('shared.weight', state['embeddings.weight'].t(), 'embeddings.weight')
    sn('linear', 'generator.gen_z', zy, lambda w: channels_first_rows(w, 16 * C))
    t.put('linear.bias', channels_first_rows(state['generator.gen_z.bias'], 16 * C),
          'generator.gen_z.bias')
    for i, name in enumerate(hf_modules(cfg, arch[2])):
        block = f'blocks.{i}.0.'
        for k in range(4):
            bn, ours = f'{name}bn_{k}.', f'{block}bn{k + 1}.'
            for part, our_part in (('scale', 'gain'), ('offset', 'bias')):
                sn(ours + our_part, bn + part, zy)
            t.put(ours + 'stored_mean', level_stats(state[bn + 'running_means'], truncation),
                  bn + 'running_means')
            t.put(ours + 'stored_var', level_stats(state[bn + 'running_vars'], truncation),
                  bn + 'running_vars')
            conv = f'{name}conv_{k}'
            sn(f'{block}conv{k + 1}', conv)
            t.put(f'{block}conv{k + 1}.bias', state[conv + '.bias'], conv + '.bias')
    if arch[2]:
        name = f"generator.layers.{cfg['attention_layer_position']}."
        block = f"blocks.{cfg['attention_layer_position'] - 1}.1."
        for part, ours in (('theta', 'theta'), ('phi', 'phi'), ('g', 'g'), ('o_conv', 'o')):
            sn(block + ours, name + 'snconv1x1_' + part)
        t.put(block + 'gamma', state[name + 'gamma'].reshape(()), name + 'gamma')
    scale = convert_hf_rgb(t, state)
    # Our output BN's eps is fixed (the release's 1e-5): fold HF's into the variance.
    out_eps = G.output_layer[0].eps
    t.put('output_layer.0.gain', state['generator.bn.weight'].double() * scale,
          'generator.bn.weight')
    t.put('output_layer.0.bias', state['generator.bn.bias'].double() * scale,
          'generator.bn.bias')
    t.put('output_layer.0.stored_mean', level_stats(state['generator.bn.running_means'],
                                                    truncation), 'generator.bn.running_means')
    t.put('output_layer.0.stored_var', level_stats(state['generator.bn.running_vars'],
                                                   truncation) + (eps - out_eps),
          'generator.bn.running_vars')
    return t.done(), config


def convert_hf_rgb(t, state):
    """The RGB conv's first 3 of C output channels; returns the factor for the output BN.

    HF normalises all C rows by their sigma and keeps 3 channels; our 3-row conv can only
    estimate the 3 rows' own sigma. Its output is linear in its input, and ReLU commutes with a
    positive factor, so scaling the output BN's gain and bias by ours / HF's makes it exact.
    """
    name = 'generator.conv_to_rgb'
    w, _, sigma = hf_sn(state, name)
    w3 = w[:3]
    t.put('output_layer.2.bias', state[name + '.bias'][:3], name + '.bias')
    if not t.sn:
        t.put_sn('output_layer.2', w3, None, sigma, name)
        return 1.0
    u0 = torch.linalg.svd(w3.double().flatten(1), full_matrices=False).U[:, :1].t()
    ours = project_sigma(w3, u0, name)
    t.put_sn('output_layer.2', w3, u0, ours, name)
    return ours / sigma


# ----------------------------------------------------------------------------
# The release's TF-Hub BigGAN.

class TFHubModule:
    """Named tensors of a TF-Hub module's checkpoint as torch tensors, EMA copies by choice."""

    def __init__(self, folder, ema=True):
        import tf_bundle
        try:
            self.bundle = tf_bundle.Bundle(folder)
        except tf_bundle.BundleError as e:
            raise flags.ConfigError(str(e)) from None
        # Variables carry 'module/' when dumped from a loaded hub.Module, not in the checkpoint.
        self.prefix = 'module/' if any(k.startswith('module/') for k in self.bundle.keys()) else ''
        self.ema = ema

    def key(self, name, averaged=True):
        """The checkpoint name of variable `name` (its EMA copy when averaged and asked for)."""
        key = self.prefix + name + (TFHUB_EMA if self.ema and averaged else '')
        if key not in self.bundle:
            hint = (' (no EMA weights in this module? pass --no_ema)'
                    if self.ema and averaged and self.prefix + name in self.bundle else '')
            raise flags.ConfigError(f'{self.bundle.prefix} has no variable {key}{hint}: is it a '
                                    f'TF-Hub BigGAN module of this resolution?')
        return key

    def shape(self, name, ndim, averaged=True):
        """The shape of `name`, refused unless it has ndim non-empty dimensions."""
        key = self.key(name, averaged)
        shape = self.bundle.shape(key)
        if len(shape) != ndim or not all(shape):
            raise flags.ConfigError(f'{self.bundle.prefix}: {key} has shape {shape}; a TF-Hub '
                                    f'BigGAN module holds a {ndim}-D one there')
        return shape

    def held_bytes(self):
        """Bytes of the bundle's data files: the most weights a model built from it can have."""
        pattern = glob.escape(self.bundle.prefix) + '.data-*'
        return sum(os.path.getsize(p) for p in glob.glob(pattern) if os.path.isfile(p))

    def __call__(self, name, averaged=True, want=None):
        """The tensor `name` as a torch tensor, refused unless it holds floats and, when want
        is given, has that shape (a tuple) or that many values (an int): every later
        reshape of it then holds."""
        import tf_bundle
        try:
            array = self.bundle[self.key(name, averaged)]
        except tf_bundle.BundleError as e:
            raise flags.ConfigError(str(e)) from None
        if array.dtype.kind != 'f':
            raise flags.ConfigError(f'{self.bundle.prefix}: {name} holds {array.dtype} values; '
                                    f'a TF-Hub BigGAN module holds floats')
        if want is not None and (array.shape != want if isinstance(want, tuple)
                                 else array.size != want):
            raise flags.ConfigError(f'{self.bundle.prefix}: {name} has shape {array.shape} '
                                    f'where this model needs '
                                    f"{want if isinstance(want, tuple) else f'{want} values'}")
        return torch.from_numpy(array.copy())


def tfhub_flags(module, resolution, G_param):
    """The release's config for a TF-Hub resolution, with widths read off the checkpoint."""
    n_classes, shared_dim = module.shape('linear/w', 2)
    chunk, out = module.shape('Generator/G_Z/G_linear/w', 2)
    n_blocks = len(BigGAN.G_CHANNELS[resolution][0])
    if out % 256:
        raise flags.ConfigError(f'{module.bundle.prefix}: Generator/G_Z/G_linear/w has {out} '
                                f'outputs; a TF-Hub BigGAN has 16 x 16 x its width (a '
                                f'multiple of 256)')
    return ['--model', 'BigGAN', '--G_param', G_param, '--G_ch', str(out // 256), '--G_shared',
            '--hier', '--shared_dim', str(shared_dim), '--dim_z', str(chunk * (n_blocks + 1)),
            '--G_attn', str(TFHUB_ATTENTION[resolution]), '--resolution', str(resolution),
            '--n_classes', str(n_classes), '--dataset', dataset_for(resolution),
            '--BN_eps', '1e-4', '--SN_eps', '1e-4', '--num_G_SVs', '1', '--num_G_SV_itrs', '1',
            '--norm_style', 'bn', '--G_nl', 'inplace_relu', '--G_eval_mode', '--skip_init']


def convert_tfhub(module, resolution, truncation=None, G_param='SN'):
    """(this codebase's G state dict, config, whether the statistics follow the truncation)."""
    config, G = build_config(tfhub_flags(module, resolution, G_param),
                             (module.bundle.prefix + '.data-*', module.held_bytes()))
    t = StateDictBuilder(G, sn=G_param == 'SN')
    per_truncation = []

    def tf_shape(key):
        """The shape TF stores our weight `key` in: HWIO for convolutions, (in, out) else."""
        shape = tuple(t.template[key].shape)
        return shape[2:] + (shape[1], shape[0]) if len(shape) == 4 else shape[::-1]

    def sn(key, name, layout, bias=True):
        out = t.template[key + '.weight'].shape[0]
        weight = layout(module(name + '/w', want=tf_shape(key + '.weight')))
        u0 = module(name + '/u0', averaged=False, want=out).reshape(1, -1)
        if name.endswith('G_linear'):
            u0 = channels_first_rows(u0.t(), weight.shape[0] // 16).t()
        t.put_sn(key, weight, u0, project_sigma(weight, u0, name), name)
        if bias:
            b = module(name + '/b', want=out).reshape(-1)
            t.put(key + '.bias', channels_first_rows(b, b.shape[0] // 16)
                  if name.endswith('G_linear') else b, name + '/b')

    def stats(key, name):
        for ours in ('mean', 'var'):
            value = module(f'{name}/accumulated_{ours}', averaged=False)
            width = t.template[f'{key}.stored_{ours}'].shape[0]
            if value.dim() not in (1, 2) or value.shape[-1] != width or (
                    value.dim() == 2 and value.shape[0] < 2):
                raise flags.ConfigError(f'{module.bundle.prefix}: {name}/accumulated_{ours} '
                                        f'has shape {tuple(value.shape)}; this model needs '
                                        f'({width},) or (levels >= 2, {width})')
            if value.dim() == 2:  # statistics per truncation level, as HF's files hold them
                if truncation is None:
                    raise flags.ConfigError((f'{name} holds BN statistics per truncation: pass '
                                            '--truncation'))
                value = level_stats(value, truncation)
                per_truncation.append(name)
            t.put(f'{key}.stored_{ours}', value, name)

    conv = functools.partial(torch.permute, dims=(3, 2, 0, 1))  # TF's HWIO -> OIHW
    shared_dim = config['shared_dim']
    t.put('shared.weight', module('linear/w', want=tuple(t.template['shared.weight'].shape)),
          'linear/w')
    sn('linear', 'Generator/G_Z/G_linear',
       lambda w: channels_first_rows(w.t(), w.shape[1] // 16))
    for i in range(len(BigGAN.G_CHANNELS[resolution][0])):
        name, block = f"Generator/GBlock{f'_{i}' if i else ''}/", f'blocks.{i}.0.'
        for tf_conv, ours in (('conv0', 'conv1'), ('conv1', 'conv2'), ('conv_sc', 'conv_sc')):
            sn(block + ours, name + tf_conv, conv)
        for k, suffix in ((1, ''), (2, '_1')):
            for part, ours in (('gamma', 'gain'), ('beta', 'bias')):
                # Their conditioning vector is [z chunk, class]; ours is [class, z chunk].
                sn(f'{block}bn{k}.{ours}', f'{name}HyperBN{suffix}/{part}',
                   lambda w: swap_halves(w.t(), w.shape[0] - shared_dim), bias=False)
            stats(f'{block}bn{k}', f'{name}CrossReplicaBN{suffix}')
    attention = f'blocks.{int(math.log2(TFHUB_ATTENTION[resolution])) - 3}.1.'
    for part, ours in (('theta', 'theta'), ('phi', 'phi'), ('g', 'g'), ('o_conv', 'o')):
        sn(attention + ours, 'Generator/attention/' + part, conv, bias=False)
    t.put(attention + 'gamma', module('Generator/attention/gamma', want=1).reshape(()),
          'Generator/attention/gamma')
    width = t.template['output_layer.0.gain'].numel()
    t.put('output_layer.0.gain', module('Generator/ScaledCrossReplicaBN/gamma', want=width)
          .reshape(-1),
          'Generator/ScaledCrossReplicaBN/gamma')
    t.put('output_layer.0.bias', module('Generator/ScaledCrossReplicaBN/beta', want=width)
          .reshape(-1),
          'Generator/ScaledCrossReplicaBN/beta')
    stats('output_layer.0', 'Generator/ScaledCrossReplicaBNbn')
    sn('output_layer.2', 'Generator/conv_2d', conv)
    return t.done(), config, bool(per_truncation)


# ----------------------------------------------------------------------------
# Command line.

def _add_shared(parser, name, *aliases, **changes):
    """Add the shared definition of flag name (flags.FLAGS), with the converter's changes."""
    parser.add_argument(*aliases, name, **{**flags.FLAGS[name], **changes})


def prepare_parser():
    """The converter's command line; flags train.py also has use the shared definitions.

    Intended differences from them: --truncation defaults to None (not given: HF requires it,
    TF-Hub only for modules with statistics per level; sample.py's 0.0 would mean plain z);
    -r/--resolution and --G_param accept only what a converter can build.
    """
    parser = flags.new_parser(__doc__.split('\n\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--hf_dir', type=str, default='',
                        help="HuggingFace BigGAN-deep folder (config.json, pytorch_model.bin)")
    source.add_argument('--tfhub_dir', type=str, default='',
                        help='Extracted TF-Hub BigGAN module (the folder holding variables/)')
    _add_shared(parser, '--truncation', default=None,
                help='Truncation the BN statistics are taken for, in (0, 1] (HF: '
                     'required; TF-Hub: only for modules with statistics per level)')
    _add_shared(parser, '--resolution', '-r', choices=[128, 256, 512],
                help="The TF-Hub module's resolution")
    parser.add_argument('--no_ema', action='store_true', default=False,
                        help='TF-Hub: the raw weights instead of their EMA copies')
    _add_shared(parser, '--G_param', choices=['SN', 'plain'],
                help='SN (default): a trainable spectrally normalised G; plain: weights '
                     'divided by their spectral norm once')
    # The checkpoint lands where train.py and sample.py look for it: their very flags.
    flags.add_flags(parser, ['--weights_root', '--experiment_name'])
    parser.add_argument('--overwrite', action='store_true', default=False,
                        help='Replace the checkpoint files of an existing experiment folder (all '
                             'of them: its D and optimizer files are removed); without it such '
                             'a folder is refused')
    return parser


def run(config):
    """Convert what the flags name, write the checkpoint, print how to sample it."""
    if config['experiment_name']:
        check_name(config['experiment_name'], '--experiment_name')
    truncation = config['truncation']
    if truncation is not None and not 0 < truncation <= 1:
        raise flags.ConfigError(f'--truncation must lie in (0, 1], got {truncation:g}')
    source = config['hf_dir'] or config['tfhub_dir']
    info = {'source': 'huggingface' if config['hf_dir'] else 'tfhub',
            'path': os.path.abspath(source)}
    note = ''
    if config['hf_dir']:
        if truncation is None:
            raise flags.ConfigError('--hf_dir needs --truncation: HF\'s BN statistics differ '
                                    'per truncation, and a checkpoint holds one set')
        cfg, state = read_hf(config['hf_dir'])
        # Checked on the source too: a NaN would otherwise stop the SN solve, not name itself.
        bad = first_nonfinite(state)
        if bad is not None:
            raise flags.ConfigError(f"{config['hf_dir']}: its weight {bad} is NaN or Inf; the "
                                    f'source files are damaged, nothing is written')
        G_state, model_config = convert_hf(cfg, state, truncation, config['G_param'])
        name = f'{os.path.basename(os.path.normpath(source))}_t{truncation:g}'
    else:
        if not config['resolution']:
            raise flags.ConfigError('--tfhub_dir needs -r/--resolution 128, 256 or 512')
        module = TFHubModule(source, ema=not config['no_ema'])
        G_state, model_config, per_level = convert_tfhub(module, config['resolution'],
                                                         truncation, config['G_param'])
        if not per_level:
            # The release's limitation: one set of statistics, TF-Hub's at truncation 1.
            note = ('note: this module holds one set of BN statistics, so samples match '
                    "TF-Hub's at truncation 1 only")
            truncation = 1.0 if truncation is None else truncation
        info['ema'] = not config['no_ema']
        name = f"biggan-{config['resolution']}{'_noema' if config['no_ema'] else ''}"
    info['truncation'] = truncation if not note else 1.0
    name = check_name(config['experiment_name'] or name, 'experiment name')
    save_checkpoint(G_state, model_config, config['weights_root'], name, info,
                    config['overwrite'])
    print(f"Wrote {os.path.join(config['weights_root'], name)}")
    if note:
        print(note)
    print(f'Sample it with:\n  python sample.py --config_from_name --weights_root '
          f"{shlex.quote(config['weights_root'])} --experiment_name {shlex.quote(name)} "
          f'--G_eval_mode --truncation {truncation:g} --sample_sheets')
    return os.path.join(config['weights_root'], name)


def main(argv=None):
    return flags.run_cli(run, prepare_parser(), argv)


if __name__ == '__main__':
    main()
