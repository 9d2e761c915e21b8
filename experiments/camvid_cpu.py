"""The CPU recipe for unseen streets, chosen on the held-out drive: 3500 steps on a 2-core
machine, evaluated at full 360x480 (its numbers and times: docs/experiments.md).

  fcn-jax train --config experiments/camvid_cpu.py --workdir runs/camvid_cpu

`camvid_heldout.py:jitter_scale` (colour jitter, 128x160 crops of frames scaled 0.3-0.9,
FCN-32s, AdamW, cosine), trained with plain cross-entropy: at 3500 steps it scored higher on the
held-out drive than with median-frequency class weights. The large classes gain, and the
thin ones (pole, sign, pedestrian, bicyclist) are lost. It trains on `train_seen` and selects on
`heldout` (drive 0006R0), so its held-out number is a fair estimate of a drive never seen;
`full` trains on all 367 train images (0006R0 included) for the model to use on new streets,
selecting on val.
"""

from pathlib import Path

from fcn_jax.config import load_config


def get_config(mode: str = "heldout"):
    c = load_config(f"{Path(__file__).with_name('camvid_heldout.py')}:jitter_scale")
    c.train.steps = 3500
    c.train.checkpoint_every = 500
    c.loss.class_weighting = "none"  # measured against median_frequency at 3500 steps
    if mode == "full":
        c.data.train_split, c.data.eval_split, c.data.extra_eval_splits = "train", "val", ()
    elif mode != "heldout":
        raise ValueError(f"mode must be heldout or full, got {mode!r}")
    return c
