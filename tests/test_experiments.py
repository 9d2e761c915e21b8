"""Every experiment config loads and passes the checks `fcn-jax train` makes before its first
step, in every mode its docstring names: a typo in a recipe meant for a lent GPU would
otherwise be found only there."""

from pathlib import Path

import pytest

from fcn_jax import config as config_lib
from fcn_jax.data.camvid import HELDOUT, TRAIN_SEEN

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

MODES = {
    "camvid_quickstart.py": [""],
    "camvid_smoke.py": [""],
    "camvid_fcn32s.py": [""],
    "camvid_fcn16s.py": ["staged", "atonce"],
    "camvid_fcn8s.py": ["staged", "atonce"],
    "camvid_fcn32s_vgg16.py": [""],
    "camvid_fcn16s_vgg16.py": [""],
    "camvid_fcn8s_vgg16.py": [""],
    "camvid_heldout.py": ["base", "jitter", "jitter_scale", "jitter_noweights", "jitter_8s"],
    "camvid_cpu.py": [
        "",
        "full",
        "heldout",
        "sixth",
        "sixth_heldout",
        "fifth",
        "fifth_heldout",
        "fourth",
        "fourth_heldout",
        "third",
        "third_heldout",
        "second",
        "second_heldout",
        "first",
        "first_heldout",
    ],
    "camvid_cpu_staged.py": ["32s", "16s", "8s"],
    "camvid_gpu_heldout.py": ["32s", "16s", "8s", "8s_atonce"],
}


def _load(name: str, mode: str):
    return config_lib.load_config(f"{EXPERIMENTS / name}:{mode}" if mode else str(EXPERIMENTS / name))


def test_the_list_covers_every_config_file():
    assert sorted(MODES) == sorted(p.name for p in EXPERIMENTS.glob("*.py"))


@pytest.mark.parametrize("name,mode", [(n, m) for n, modes in MODES.items() for m in modes])
def test_config_loads_and_passes_the_checks(name, mode, tmp_path, monkeypatch):
    c = _load(name, mode)
    if c.init_from:  # a staged config names the earlier stage's run, relative to where it runs
        monkeypatch.chdir(tmp_path)
        (tmp_path / c.init_from).mkdir(parents=True)
    config_lib.check(c)


@pytest.mark.parametrize(
    "name", ["camvid_heldout.py", "camvid_cpu.py", "camvid_cpu_staged.py", "camvid_gpu_heldout.py"]
)
def test_an_unknown_mode_is_refused(name):
    with pytest.raises(ValueError, match="nonsense"):
        _load(name, "nonsense")


def test_the_gpu_heldout_recipe_is_the_standard_one_on_the_heldout_drive():
    """Each stage differs from the standard recipe's stage only in the splits, the start and
    the augmentation the CPU screening chose; the staged chain starts from its own runs."""
    standard = {
        "32s": _load("camvid_fcn32s.py", ""),
        "16s": _load("camvid_fcn16s.py", "staged"),
        "8s": _load("camvid_fcn8s.py", "staged"),
        "8s_atonce": _load("camvid_fcn8s.py", "atonce"),
    }
    starts = {"32s": "", "16s": "runs/heldout_fcn32s", "8s": "runs/heldout_fcn16s", "8s_atonce": ""}
    for stage, base in standard.items():
        c = _load("camvid_gpu_heldout.py", stage)
        assert (c.data.train_split, c.data.eval_split, tuple(c.data.extra_eval_splits)) == (
            TRAIN_SEEN,
            HELDOUT,
            ("val",),
        )
        assert c.init_from == starts[stage]
        assert not any(c.data.color_jitter)
        assert tuple(c.data.scale_range) == (0.5, 1.5)
        changed = {"data", "init_from"}
        assert {k: v for k, v in c.to_dict().items() if k not in changed} == {
            k: v for k, v in base.to_dict().items() if k not in changed
        }
        same_data = ("crop_size", "flip", "name", "cache")
        assert {k: c.data[k] for k in same_data} == {k: base.data[k] for k in same_data}


def test_the_cpu_recipe_trains_on_every_drive_unless_asked_for_the_heldout_one():
    """The default is the model to use (all three drives); `heldout` is the same recipe on two
    drives, selected on the third, which is how it was chosen."""
    default, full, heldout = (_load("camvid_cpu.py", m) for m in ("", "full", "heldout"))
    assert default.to_dict() == full.to_dict()
    assert (full.data.train_split, full.data.eval_split, tuple(full.data.extra_eval_splits)) == (
        "train",
        "val",
        (),
    )
    assert (heldout.data.train_split, heldout.data.eval_split) == (TRAIN_SEEN, HELDOUT)
    # Evaluated the way it was chosen: plain beside scales and flips (docs/experiments.md).
    assert tuple(full.inference.scales) == (0.5, 0.75, 1.0) and full.inference.flip
    splits = ("train_split", "eval_split", "extra_eval_splits")
    for c in (full, heldout):
        for k in splits:
            del c.data[k]
    assert full.to_dict() == heldout.to_dict()


def test_each_cpu_recipe_differs_from_the_one_before_only_where_it_was_measured_to():
    """The screening tables' rows changed the earlier recipes one key at a time; they must stay
    reproducible as `first` to `sixth`, and each recipe may differ from the one before only in
    the keys that were measured against it on the held-out drive (docs/experiments.md)."""
    first_to_second = ("data.crop_size", "train.steps", "loss.class_weighting")
    second_to_third = ("data.crop_size", "train.steps", "model.fc_channels")
    third_to_fourth = fourth_to_fifth = ("data.scale_range",)
    fifth_to_sixth = ("data.color_jitter",)
    sixth_to_recipe = ("data.crop_context",)
    jitter = tuple(_load("camvid_heldout.py", "jitter").data.color_jitter)
    for suffix in ("", "_heldout"):
        recipe = _load("camvid_cpu.py", suffix.lstrip("_") or "full")
        first, second, third, fourth, fifth, sixth = (
            _load("camvid_cpu.py", f"{r}{suffix}")
            for r in ("first", "second", "third", "fourth", "fifth", "sixth")
        )
        assert tuple(first.data.crop_size) == (128, 160) and first.train.steps == 3500
        assert first.loss.class_weighting == "none" and first.model.fc_channels == 4096
        assert tuple(second.data.crop_size) == (160, 200) and second.train.steps == 2800
        assert second.loss.class_weighting == "sqrt_median_frequency"
        assert second.model.fc_channels == 4096
        assert tuple(third.data.crop_size) == (192, 240) and third.train.steps == 3200
        assert third.model.fc_channels == 2048 and tuple(third.data.scale_range) == (0.3, 0.9)
        assert tuple(fourth.data.scale_range) == (0.4, 1.0)
        assert tuple(fifth.data.scale_range) == (0.4, 1.2)
        assert tuple(fifth.data.color_jitter) == jitter and any(jitter)
        assert not any(sixth.data.color_jitter) and not sixth.data.crop_context
        assert recipe.data.crop_context
        assert _without(second, first_to_second) == _without(first, first_to_second)
        assert _without(third, second_to_third) == _without(second, second_to_third)
        assert _without(fourth, third_to_fourth) == _without(third, third_to_fourth)
        assert _without(fifth, fourth_to_fifth) == _without(fourth, fourth_to_fifth)
        assert _without(sixth, fifth_to_sixth) == _without(fifth, fifth_to_sixth)
        assert _without(recipe, sixth_to_recipe) == _without(sixth, sixth_to_recipe)


def _without(c, keys: tuple[str, ...]) -> dict:
    d = c.to_dict()
    for key in keys:
        section, _, name = key.partition(".")
        d[section].pop(name) if name else d.pop(section)
    return d


def test_the_staged_cpu_recipe_differs_from_the_cpu_recipe_only_in_its_stages():
    """Staged against at once is a fair comparison only if the stages together train as many
    steps as the at-once recipe, on the same data and loss, each from the one before."""
    recipe = _load("camvid_cpu.py", "first_heldout")
    stages = {s: _load("camvid_cpu_staged.py", s) for s in ("32s", "16s", "8s")}
    assert sum(c.train.steps for c in stages.values()) == recipe.train.steps
    assert [c.init_from for c in stages.values()] == ["", "runs/cpu_staged_32s", "runs/cpu_staged_16s"]
    assert [c.model.variant for c in stages.values()] == ["32s", "16s", "8s"]
    lr = recipe.optimizer.learning_rate
    assert [c.optimizer.learning_rate for c in stages.values()] == [lr, lr / 2, lr / 2]
    changed = ("train.steps", "init_from", "model.variant", "optimizer.learning_rate")
    for c in stages.values():
        assert _without(c, changed) == _without(recipe, changed)


@pytest.mark.parametrize("scales", [(0.0, 1.0), (1.0, 1.0), (), (1.0, "2")])
def test_bad_inference_scales_are_refused_before_training(scales):
    c = config_lib.base_config()
    c.inference.scales = scales
    with pytest.raises(config_lib.ConfigError, match="inference.scales"):
        config_lib.check(c)
