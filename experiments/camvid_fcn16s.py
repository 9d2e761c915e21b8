"""FCN-16s on CamVid: staged from a trained FCN-32s (the paper's recipe) or at once.

  fcn-jax train --config experiments/camvid_fcn16s.py --workdir runs/camvid_fcn16s        # staged
  fcn-jax train --config experiments/camvid_fcn16s.py:atonce --workdir runs/camvid_fcn16s_atonce
Staged reads `init_from` (default runs/camvid_fcn32s): every layer of the same name and shape
is copied; the new skip score layer starts at zero and the new upsampling at bilinear.
"""

from pathlib import Path

from fcn_jax.config import load_config


def get_config(mode: str = "staged"):
    c = load_config(str(Path(__file__).with_name("camvid_fcn32s.py")))
    c.model.variant = "16s"
    if mode == "staged":
        c.init_from = "runs/camvid_fcn32s"
        c.optimizer.learning_rate = 1e-4  # fine-tuning a trained net
        c.optimizer.warmup_steps = 50
        c.train.steps = 1000
    elif mode != "atonce":
        raise ValueError(f"mode must be staged or atonce, got {mode!r}")
    return c
