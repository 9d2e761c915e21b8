"""A tiny CamVid run for tests and install checks: small crops, a few dozen steps."""

from fcn_jax.config import base_config


def get_config():
    c = base_config()
    c.data.crop_size = (64, 96)
    c.data.scale_range = (0.5, 0.75)
    c.model.variant = "8s"
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.weight_decay = 1e-4
    c.train.steps = 24
    c.train.batch_size = 2
    c.train.log_every = 4
    c.train.checkpoint_every = 8
    c.train.eval_every = 0
    c.train.eval_batch_size = 2
    c.train.num_pictures = 2
    return c
