"""Screening recipes for unseen streets on a 2-core CPU: train on CamVid's `train_seen`
(drives 0001TP and 0016E5), select on `heldout` (drive 0006R0, never seen in training) and
report `val` (0016E5) beside it. Results: docs/experiments.md.

  fcn-jax train --config experiments/camvid_heldout.py:base --workdir runs/heldout_base
  variants: base | jitter | jitter_scale | jitter_noweights | jitter_8s

`base` is the Quickstart recipe (FCN-32s, 128x160 crops of frames scaled 0.4-0.6: the whole
frame at low resolution, AdamW, cosine) for 1500 steps; each variant changes one thing.
"""

from pathlib import Path

from fcn_jax.config import heldout_drive, load_config

JITTER = (0.4, 0.4, 0.4, 0.05)  # brightness, contrast, saturation +-40 %, hue +-18 degrees


def get_config(variant: str = "base"):
    c = heldout_drive(load_config(str(Path(__file__).with_name("camvid_quickstart.py"))))
    c.optimizer.warmup_steps = 50
    c.train.steps = 1500
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.eval_batch_size = 2  # eval_every stays 0: once, at the end (two splits cost minutes here)
    if variant == "base":
        return c
    c.data.color_jitter = JITTER
    if variant == "jitter":
        pass
    elif variant == "jitter_scale":  # more scales: closer crops and wider views
        c.data.scale_range = (0.3, 0.9)
    elif variant == "jitter_noweights":  # plain cross-entropy instead of median-frequency weights
        c.loss.class_weighting = "none"
    elif variant == "jitter_8s":  # FCN-8s at once; measured at 3500 steps (camvid_cpu.py), not 1500
        c.model.variant = "8s"
    else:
        raise ValueError(f"unknown variant {variant!r}: see the module doc")
    return c
