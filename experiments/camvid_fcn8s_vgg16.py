"""FCN-8s on a VGG16 backbone, CamVid: staged from a trained FCN-16s-VGG16 or at once.

  fcn-jax train --config experiments/camvid_fcn8s_vgg16.py --workdir runs/camvid_fcn8s_vgg16
  fcn-jax train --config experiments/camvid_fcn8s_vgg16.py:atonce --workdir runs/camvid_fcn8s_vgg16_atonce
Staged reads `init_from` (default runs/camvid_fcn16s_vgg16); the new skip (score_pool3) starts
at zero and the new upsampling at bilinear, as in experiments/camvid_fcn8s.py.
"""

from pathlib import Path

from fcn_jax.config import load_config


def get_config(mode: str = "staged"):
    c = load_config(f"{Path(__file__).with_name('camvid_fcn8s.py')}:{mode}")
    c.model.backbone = "vgg16"
    c.train.batch_size = 8
    if mode == "staged":
        c.init_from = "runs/camvid_fcn16s_vgg16"
    return c
