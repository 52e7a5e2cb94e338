"""One rank of test_collapse.py's two-rank test (test_ranks_roll_back_and_stop_together):
train.main under torchrun's environment variables, with test_collapse.py's stand-in step
(its random moves drawn from a seed of this rank's own, so the ranks' weights part) and the
rule's windows shortened, so that a collapse comes within 200 iterations.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python tests/collapse_rank.py OUT FLAGS...

The losses are a balanced game's up to itr 100 and D winning from then on, rollback or not.
Writes OUT/rank{r}.pt as the run ends, however it ends: the training state the first step
after a rollback found ('after_rollback') and the one at itr 100 ('before').
"""
import os
import sys

import numpy as np
import torch

# Run as a script: the repo root on sys.path, as the tests have it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_collapse import d_wins_losses, healthy_losses, stand_in  # noqa: E402

import collapse  # noqa: E402
import train  # noqa: E402
import train_fns  # noqa: E402
import utils  # noqa: E402

# The rule as test_collapse.RULE has it, but for the windows: 40 iterations judged, 20 losses
# needed, 2 judgements to confirm, a checkpoint healthy 40 clean iterations on. The
# signals' thresholds are the frozen ones.
SHORT = {'WINDOW': 40, 'MIN_POINTS': 20, 'PERSIST': 2, 'HEALTHY_AFTER': 40}
BAD_FROM = 101


def main(out, flags):
    rank = int(os.environ['RANK'])
    for name, value in SHORT.items():
        setattr(collapse, name, value)
    rng = np.random.default_rng(rank)

    def losses_at(itr, state_dict):
        return (healthy_losses if itr < BAD_FROM else d_wins_losses)(rng)
    seen = {}
    train_fns.GAN_training_function = stand_in(losses_at, seen, seed=rank)
    # The sheets cost seconds a save and the watch never reads them.
    utils.save_sheets = utils.save_image = lambda *a, **k: None
    try:
        train.main(flags)
    finally:
        torch.save({'after_rollback': seen.get('after_rollback'), 'before': seen.get(100)},
                   os.path.join(out, f'rank{rank}.pt'))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2:])
