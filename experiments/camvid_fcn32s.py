"""FCN-32s on CamVid (11 classes), trained from scratch: the first stage of the paper's recipe.

ImageNet weights cannot be had on these machines; with them, set
`--config.init_from=alexnet.msgpack` (from `fcn-jax convert`) and a lower learning rate.
Run:  fcn-jax train --config experiments/camvid_fcn32s.py --workdir runs/camvid_fcn32s
"""

from fcn_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "camvid"
    c.data.crop_size = (360, 480)  # full frames: random rescale, then crop/pad back to 360x480
    c.data.scale_range = (0.75, 1.25)
    c.data.flip = True
    c.data.cache = True
    c.model.variant = "32s"
    c.model.dropout_rate = 0.5
    c.optimizer.name = "adamw"  # from scratch, without batch norm, Adam trains where SGD stalls
    c.optimizer.learning_rate = 2e-4
    c.optimizer.weight_decay = 1e-2  # decoupled (AdamW)
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.bias_lr_mult = 2.0
    c.optimizer.clip_grad_norm = 10.0
    c.loss.class_weighting = "median_frequency"  # as SegNet's from-scratch CamVid baselines
    c.train.batch_size = 16
    c.train.steps = 2000
    c.train.log_every = 20
    c.train.checkpoint_every = 500
    c.train.eval_every = 500
    c.train.eval_batch_size = 8
    return c
