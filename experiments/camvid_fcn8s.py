"""FCN-8s on CamVid: staged from a trained FCN-16s (the paper's recipe) or at once.

fcn-jax train --config experiments/camvid_fcn8s.py --workdir runs/camvid_fcn8s          # staged
fcn-jax train --config experiments/camvid_fcn8s.py:atonce --workdir runs/camvid_fcn8s_atonce
"""

from pathlib import Path

from fcn_jax.config import load_config


def get_config(mode: str = "staged"):
    c = load_config(str(Path(__file__).with_name("camvid_fcn32s.py")))
    c.model.variant = "8s"
    if mode == "staged":
        c.init_from = "runs/camvid_fcn16s"
        c.optimizer.learning_rate = 1e-4
        c.optimizer.warmup_steps = 50
        c.train.steps = 1000
    elif mode != "atonce":
        raise ValueError(f"mode must be staged or atonce, got {mode!r}")
    return c
