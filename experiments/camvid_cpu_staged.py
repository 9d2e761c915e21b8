"""The first CPU recipe staged, FCN-32s -> 16s -> 8s (the paper's order), against FCN-8s
trained at once (`camvid_cpu.py:first_heldout`) with the same 3500 steps in all: 2000 for
FCN-32s, then 750 for each finer stage, on `train_seen`, selected on `heldout` with val
beside it (its numbers: docs/experiments.md).

  fcn-jax train --config experiments/camvid_cpu_staged.py:32s --workdir runs/cpu_staged_32s
  fcn-jax train --config experiments/camvid_cpu_staged.py:16s --workdir runs/cpu_staged_16s
  fcn-jax train --config experiments/camvid_cpu_staged.py:8s --workdir runs/cpu_staged_8s

Each finer stage starts from the previous stage's run (run from one directory): every layer of
the same name and shape is copied, the new skip score layer starts at zero and the new
upsampling at bilinear. Like the standard recipe's staged configs, the finer stages fine-tune
at half the learning rate.
"""

from pathlib import Path

from fcn_jax.config import load_config

# stage: (steps, the run it starts from)
STAGES = {
    "32s": (2000, ""),
    "16s": (750, "runs/cpu_staged_32s"),
    "8s": (750, "runs/cpu_staged_16s"),
}


def get_config(stage: str = "32s"):
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    c = load_config(f"{Path(__file__).with_name('camvid_cpu.py')}:first_heldout")
    c.model.variant = stage
    c.train.steps, c.init_from = STAGES[stage]
    if c.init_from:
        c.optimizer.learning_rate /= 2  # fine-tuning a trained net
    return c
