"""The Quickstart's main job: a few minutes of CamVid training on a CPU, then evaluation
on the whole val split and prediction pictures (runs/quickstart/pictures, report/).

Small crops keep a step near a second on two cores; the numbers it reaches are those of
a few minutes of training, not of the recipe (see experiments/camvid_fcn*.py).
"""

from fcn_jax.config import base_config


def get_config():
    c = base_config()
    c.data.crop_size = (128, 160)
    c.data.scale_range = (0.4, 0.6)  # whole-frame context at low resolution
    c.data.cache = True
    c.model.variant = "32s"
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.weight_decay = 1e-2
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 10
    c.optimizer.clip_grad_norm = 10.0
    c.train.steps = 150
    c.train.batch_size = 4
    c.train.log_every = 10
    c.train.checkpoint_every = 50
    c.train.eval_every = 0  # once, at the end
    c.train.eval_batch_size = 4
    c.train.num_pictures = 4
    return c
