"""tools/measure_variety.py against what is known independently: real S32 against another
draw of it, copies of one image, squares drawn at known positions and sizes, and the area S32's
generator draws its circles with."""
import math
import os
import sys

import numpy as np
import pytest
import torch

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import measure_variety as mv  # noqa: E402

from s32 import make_s32  # noqa: E402


def s32_by_class(per_class, seed):
    imgs, labels = make_s32(per_class, seed)
    return mv.by_class(imgs, labels, 10, per_class)


def test_real_against_real_is_one():
    """Two draws of S32: every spread ratio near 1 (100 images per class: a few % noise)."""
    rows = mv.compare(s32_by_class(100, 3), s32_by_class(100, 4))
    for row in rows:
        for m in mv.MEASURES:
            assert 1 / 1.3 < row[m] < 1.3, (row['class'], m, row[m])
        assert row['empty'] == 0


def test_copies_have_no_spread():
    """A class whose every sample is one image: each spread ratio is 0."""
    real = s32_by_class(20, 5)
    fake = [np.repeat(r[:1], 20, axis=0) for r in real]
    for row in mv.compare(fake, real):
        assert all(row[m] == pytest.approx(0, abs=1e-9) for m in mv.MEASURES), row


def squares(rng, n):
    """Bright squares of side 3, 5 or 7 at random places on a dark ramp (a plane the
    background estimate fits), with their true centres and areas."""
    side = rng.choice([3, 5, 7], n)
    x0, y0 = rng.integers(3, 22, n), rng.integers(3, 22, n)
    yy, xx = np.mgrid[0:32, 0:32]
    imgs = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        ramp = 30 + 0.8 * xx - 0.5 * yy
        img = np.stack([ramp, ramp + 10, ramp + 5], -1)
        img[y0[i]:y0[i] + side[i], x0[i]:x0[i] + side[i]] = (230, 200, 40)
        imgs[i] = img
    return imgs, x0 + (side - 1) / 2, y0 + (side - 1) / 2, side ** 2


def test_known_centres_and_areas():
    """The centroid and area std of squares drawn at known places equal the known ones, in
    N x H x W x 3 and N x 3 x H x W alike."""
    imgs, cx, cy, area = squares(np.random.default_rng(0), 200)
    for layout in (imgs, imgs.transpose(0, 3, 1, 2)):
        s = mv.spread(layout)
        assert s['centroid_x_std'] == pytest.approx(cx.std(), abs=1e-9)
        assert s['centroid_y_std'] == pytest.approx(cy.std(), abs=1e-9)
        assert s['area_std'] == pytest.approx(area.std(), abs=1e-9)
        assert s['area_mean'] == pytest.approx(area.mean(), abs=1e-9)


def test_circle_area_is_the_generators():
    """S32's circles have radius uniform in [7, 12]: mean area pi E[r^2] = pi (12^3 - 7^3) / 15."""
    circles = s32_by_class(200, 6)[0]
    expected = math.pi * (12 ** 3 - 7 ** 3) / 15
    assert mv.spread(circles)['area_mean'] == pytest.approx(expected, rel=0.02)


class Always(torch.nn.Module):
    """A classifier that answers one class, and checks that it is given [-1, 1] images."""

    def __init__(self, label):
        super().__init__()
        self.label = label

    def forward(self, x):
        assert x.shape[1:] == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
        assert x.min() < -0.5 and x.max() > 0.5  # not left in [0, 1] or [0, 255]
        return torch.nn.functional.one_hot(torch.full((len(x),), self.label), 10).float()


def test_recognised_and_targets():
    imgs = s32_by_class(10, 7)
    assert mv.recognised(Always(2), imgs[2], 2) == 1.0
    assert mv.recognised(Always(2), imgs[3], 3) == 0.0
    rows = mv.compare(imgs, imgs, Always(0))
    assert rows[0]['recognised'] == 1.0 and rows[1]['recognised'] == 0.0
    assert not mv.targets_met(rows)
    assert mv.targets_met([{**r, 'recognised': 1.0} for r in rows])  # ratios all 1


def test_a_short_draw_and_bad_flags_are_refused(tmp_path, capsys):
    labels = np.array([0, 0, 1])
    with pytest.raises(mv.StopRun, match='only 1 samples of class 1'):
        mv.by_class(np.zeros((3, 32, 32, 3), np.uint8), labels, 2, 2)
    with pytest.raises(SystemExit) as e:
        mv.main(['--images_per_class', '1', '--out', str(tmp_path / 'v')])
    assert e.value.code == 2
    assert capsys.readouterr().err.count('\n') == 1
    assert not os.path.exists(tmp_path / 'v')


def test_the_draw_notes_no_flag_the_user_did_not_give(tiny_run, data_root, tmp_path, monkeypatch,
                                                      capsys):
    """measure_variety --config_from_name on a run, no model flag given: sample.py's draw
    printed 'note: --resolution 128 is the checkpoint's 32' and three more (a prepared
    config's table values and --config_from_name itself read as flags the user gave)."""
    class Drawn(Exception):
        pass

    def draw_then_stop(config):
        real_run(config)
        raise Drawn
    real_run = mv.sample_py.run
    monkeypatch.setattr(mv.sample_py, 'run', draw_then_stop)
    monkeypatch.setattr(mv, 'load_classifier', lambda config: (None, {}))
    with pytest.raises(Drawn):
        mv.main(['--config_from_name', '--experiment_name', 'exp', '--use_ema',
                 '--images_per_class', '2', '--data_root', data_root,
                 '--weights_root', str(tiny_run / 'weights'), '--out', str(tmp_path / 'v')])
    out = capsys.readouterr().out
    assert 'Experiment name is exp' in out and 'note:' not in out
