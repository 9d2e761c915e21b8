"""FCN-32s on a VGG16 backbone, CamVid (11 classes): experiments/camvid_fcn32s.py with VGG16.

VGG16 is the paper's flagship backbone: ~134M parameters (2.2x AlexNet's) and ~5x its FLOPs
per pixel (`fcn-jax describe --backbone vgg16`), so this is a GPU recipe; the batch is halved
to 8 for memory. With ImageNet weights converted from torchvision
(`fcn-jax convert --arch vgg16 vgg16.pth vgg16.safetensors`), set
`--config.init_from=vgg16.safetensors` and a lower learning rate (the 13 convolutions, fc6
and fc7 are transplanted; score layers start at zero).
Run:  fcn-jax train --config experiments/camvid_fcn32s_vgg16.py --workdir runs/camvid_fcn32s_vgg16
"""

from pathlib import Path

from fcn_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("camvid_fcn32s.py")))
    c.model.backbone = "vgg16"
    c.train.batch_size = 8
    return c
