"""Config checks made when a training config is read (training.config.load_config / validate_config).

A malformed or nonsensical config must be refused in one line (a ConfigError, which the CLI prints as
``error: ...`` with exit code 2) before any stage trains: a ``base`` that is not text, names itself or loops, or
is not found (named relative to the config that names it first); seeds, counts and sizes that are not integers;
numbers out of range (learning rates, weight decay, probabilities, loss weights, augmentation magnitudes,
schedule and runtime settings); crop and coarse sizes that do not fit the networks that read them; and
``data.percentiles`` that are not ``[low, high]`` with 0 <= low < high <= 100. Every shipped config stays valid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List

import pytest

from training.cli import main as cli_main
from training.config import CONFIG_DIR, ConfigError, load_config, validate_config

SHIPPED = sorted(CONFIG_DIR.glob("*.json"))


def tiny(*overrides: str):
    """The tiny config with ``key.path=value`` overrides."""
    return load_config("tiny", list(overrides))


def write(path: Path, content: object) -> Path:
    """Write ``content`` as JSON to ``path`` (folders created) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# Shipped configs
# ----------------------------------------------------------------------------------------------------------
def test_there_are_shipped_configs():
    assert len(SHIPPED) > 10 and CONFIG_DIR / "tiny.json" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_passes_validation(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the base chain resolves from any working directory
    config = load_config(path)
    validate_config(config)
    assert load_config(path.stem) == config


# ----------------------------------------------------------------------------------------------------------
# base
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [5, 1.5, True, [], {}, "", "  "], ids=repr)
def test_a_base_that_is_not_a_name_is_one_config_error(base, tmp_path):
    config = write(tmp_path / "bad_base.json", {"base": base})
    with pytest.raises(ConfigError, match=re.escape(str(config)) + ": base must be the name or path of a config"):
        load_config(config)


@pytest.mark.parametrize(
    "files",
    [
        {"self.json": "self.json"},
        {"a.json": "b.json", "b.json": "a.json"},
        {"a.json": "b", "b.json": "c.json", "c.json": "a"},
        {"a.json": "./a.json"},
    ],
    ids=["itself", "two", "three-bare-names", "itself-as-path"],
)
def test_a_base_chain_that_loops_is_refused(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, base in files.items():
        write(tmp_path / "cfg" / name, {"base": base})
    first = tmp_path / "cfg" / next(iter(files))
    with pytest.raises(ConfigError, match="its base chain loops"):  # not a RecursionError
        load_config(first)


@pytest.mark.parametrize("base", ["mybase.json", "mybase", "./mybase.json"])
def test_a_base_is_found_beside_the_config_that_names_it(base, tmp_path, monkeypatch):
    write(tmp_path / "myexp" / "mybase.json", {"base": "tiny", "assn": {"steps": 3}})
    child = write(tmp_path / "myexp" / "child.json", {"base": base, "prsn": {"steps": 4}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(child)
    assert (config["assn"]["steps"], config["prsn"]["steps"]) == (3, 4)
    monkeypatch.chdir(child.parent)  # and from inside the folder, as before
    assert load_config("child.json") == config


def test_a_base_beside_the_config_comes_before_the_working_directory_and_the_shipped_ones(tmp_path, monkeypatch):
    write(tmp_path / "mybase.json", {"base": "tiny", "seed": 1})  # in the working directory
    write(tmp_path / "exp" / "mybase.json", {"base": "tiny", "seed": 2})  # beside the child
    write(tmp_path / "exp" / "tiny.json", {"base": "default", "seed": 3})  # shadows the shipped tiny
    monkeypatch.chdir(tmp_path)
    assert load_config(write(tmp_path / "exp" / "child.json", {"base": "mybase.json"}))["seed"] == 2
    assert load_config(write(tmp_path / "exp" / "child2.json", {"base": "tiny"}))["seed"] == 3
    # what is not beside it resolves as a --config value does: the working directory, then the shipped configs
    assert load_config(write(tmp_path / "other" / "child.json", {"base": "mybase.json"}))["seed"] == 1
    assert load_config(write(tmp_path / "other" / "child2.json", {"base": "tiny"}))["name"] == "tiny"


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    child = write(tmp_path / "exp" / "child.json", {"base": "nothere"})
    with pytest.raises(ConfigError) as caught:
        load_config(child)
    message = str(caught.value)
    assert message.startswith(f"{child}: base 'nothere' is not a config file beside it")
    assert str(CONFIG_DIR) in message and "gpu_long_assn" not in message and "\n" not in message
    nested = write(tmp_path / "exp" / "grandchild.json", {"base": "child.json"})
    with pytest.raises(ConfigError, match=re.escape(f"{child}: base 'nothere'")):  # the file that names it
        load_config(nested)


def test_only_the_complete_config_is_validated_not_each_base(tmp_path):
    write(tmp_path / "base.json", {"base": "tiny", "data": {"percentiles": [99.5, 0.5]}})
    child = write(tmp_path / "child.json", {"base": "base.json", "data": {"percentiles": [1, 99]}})
    assert load_config(child)["data"]["percentiles"] == [1, 99]
    with pytest.raises(ConfigError, match=r"^data\.percentiles"):
        load_config(tmp_path / "base.json")


# ----------------------------------------------------------------------------------------------------------
# Integers: true integers only (2.0 and 2.7 alike refused, never truncated)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, match",
    [
        ("seed=1.5", r"^seed must be an integer >= 0, got 1\.5$"),
        ("seed=-1", r"^seed must be an integer >= 0, got -1$"),
        ("seed=2.0", r"^seed must be an integer"),
        ("data.folds=2.7", r"^data\.folds must be an integer >= 2, got 2\.7$"),
        ("data.folds=3.0", r"^data\.folds must be an integer >= 2, got 3\.0$"),
        ("data.folds=1", r"^data\.folds must be an integer >= 2"),
        ("data.crop_size=32.9", r"^data\.crop_size must be an integer >= 16, got 32\.9$"),
        ("data.coarse_size=32.0", r"^data\.coarse_size must be an integer >= 16"),
        ("data.crop_size=8", r"^data\.crop_size must be an integer >= 16"),
        ("assn.steps=1.5", r"^assn\.steps must be an integer >= 1, got 1\.5$"),
        ("prsn.batch_size=0", r"^prsn\.batch_size must be an integer >= 1"),
        ("dae.warmup_steps=2.5", r"^dae\.warmup_steps must be an integer >= 0"),
        ("assn.warmup_steps=-3", r"^assn\.warmup_steps must be an integer >= 0"),
        ("prsn.seed=-1", r"^prsn\.seed must be an integer >= 0 or null"),
        ("prsn.seed=1.5", r"^prsn\.seed must be an integer >= 0 or null"),
        ("runtime.num_threads=-2", r"^runtime\.num_threads must be an integer >= 0"),
        ("runtime.num_threads=1.5", r"^runtime\.num_threads must be an integer >= 0"),
        ("runtime.checkpoint_every=0", r"^runtime\.checkpoint_every must be an integer >= 1"),
        ("runtime.log_every=-5", r"^runtime\.log_every must be an integer >= 1"),
        ("runtime.log_every=2.5", r"^runtime\.log_every must be an integer >= 1"),
        ("dae.noise.morph_max_px=0", r"^dae\.noise\.morph_max_px must be an integer >= 1"),
        ("dae.noise.max_blobs=1.5", r"^dae\.noise\.max_blobs must be an integer >= 1"),
        ("prsn.mask_noise.morph_max_px=-1", r"^prsn\.mask_noise\.morph_max_px must be an integer >= 1"),
    ],
)
def test_counts_sizes_and_seeds_must_be_integers_in_range(override, match):
    with pytest.raises(ConfigError, match=match):
        tiny(override)


# ----------------------------------------------------------------------------------------------------------
# Optimiser and schedule
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, match",
    [
        ("assn.lr=NaN", r"^assn\.lr must be a finite number > 0, got nan$"),
        ("localizer.lr=0", r"^localizer\.lr must be a finite number > 0"),
        ("dae.lr=-0.1", r"^dae\.lr must be a finite number > 0"),
        ("prsn.lr=Infinity", r"^prsn\.lr must be a finite number > 0, got inf$"),
        ("assn.weight_decay=-1", r"^assn\.weight_decay must be a finite number >= 0"),
        ("prsn.weight_decay=NaN", r"^prsn\.weight_decay must be a finite number >= 0"),
        ("assn.min_lr_fraction=5", r"^assn\.min_lr_fraction must be a number in \[0, 1\]"),
        ("dae.min_lr_fraction=-0.1", r"^dae\.min_lr_fraction must be a number in \[0, 1\]"),
        ("assn.grad_clip=-1", r"^assn\.grad_clip must be a finite number >= 0 \(0 = off\)"),
        ("localizer.grad_clip=Infinity", r"^localizer\.grad_clip must be a finite number >= 0"),
    ],
)
def test_optimiser_settings_out_of_range_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        tiny(override)


# ----------------------------------------------------------------------------------------------------------
# Probabilities and loss weights
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        "augment.flip_prob",
        "augment.intensity_prob",
        "augment.elastic_prob",
        "dae.noise.morph_prob",
        "dae.noise.blob_prob",
        "dae.noise.hole_prob",
        "dae.noise.warp_prob",
        "dae.noise.delete_prob",
        "dae.noise.soften_prob",
        "prsn.mask_noise.morph_prob",
        "prsn.mask_noise.warp_prob",
    ],
)
@pytest.mark.parametrize("value", ["3", "-0.1", "1.01", "NaN"])
def test_probabilities_must_be_in_0_1(key, value):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + r" must be a probability in \[0, 1\]"):
        tiny(f"{key}={value}")


@pytest.mark.parametrize(
    "key",
    [
        "localizer.ce_weight",
        "dae.dice_weight",
        "assn.beta",
        "assn.ce_weight",
        "assn.boundary_weight",
        "prsn.lambda_bssfp",
        "prsn.lambda_lge",
        "prsn.lambda_t2",
        "prsn.ce_weight",
        "prsn.endo_border_weight",
    ],
)
@pytest.mark.parametrize("value", ["-1", "NaN", "Infinity"])
def test_loss_weights_must_be_finite_and_not_negative(key, value):
    with pytest.raises(ConfigError, match="^" + re.escape(key)):
        tiny(f"{key}={value}")


# ----------------------------------------------------------------------------------------------------------
# Augmentation and data magnitudes
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, match",
    [
        ("augment.scale=2", r"^augment\.scale must be a number in \[0, 1\) \(factors drawn in \[1 - x, 1 \+ x\]\)"),
        ("augment.scale=1", r"^augment\.scale must be a number in \[0, 1\)"),  # s could reach 0
        ("augment.scale=-0.1", r"^augment\.scale must be a number in \[0, 1\)"),
        ("augment.intensity_scale=1.5", r"^augment\.intensity_scale must be a number in \[0, 1\)"),
        ("augment.noise_std=-1", r"^augment\.noise_std must be a finite number >= 0"),
        ("augment.gamma=-0.3", r"^augment\.gamma must be a finite number >= 0"),
        ("augment.intensity_shift=NaN", r"^augment\.intensity_shift must be a finite number >= 0"),
        ("augment.coarse_shift_fraction=-0.1", r"^augment\.coarse_shift_fraction must be a finite number >= 0"),
        ("augment.rotation_deg=-10", r"^augment\.rotation_deg must be a number in \[0, 180\]"),
        ("augment.rotation_deg=720", r"^augment\.rotation_deg must be a number in \[0, 180\]"),
        ("data.jitter_mm=-5", r"^data\.jitter_mm must be a finite number >= 0"),
        ("data.crop_spacing_mm=NaN", r"^data\.crop_spacing_mm must be a finite number > 0"),
        ("data.crop_spacing_mm=0", r"^data\.crop_spacing_mm must be a finite number > 0"),
        ("data.context_factor=NaN", r"^data\.context_factor must be a finite number >= 1"),
        ("data.context_factor=0.5", r"^data\.context_factor must be a finite number >= 1"),
        ("dae.noise.warp_px=-1", r"^dae\.noise\.warp_px must be a finite number >= 0"),
        ("prsn.mask_noise.warp_px=NaN", r"^prsn\.mask_noise\.warp_px must be a finite number >= 0"),
        ("dae.noise.blob_radius_px=[0, 3]", r"^dae\.noise\.blob_radius_px must be \[low, high\] px"),
        ("dae.noise.blob_radius_px=[5, 3]", r"^dae\.noise\.blob_radius_px must be \[low, high\] px"),
        ("dae.noise.blob_radius_px=[3]", r"^dae\.noise\.blob_radius_px must be \[low, high\] px"),
    ],
)
def test_augmentation_and_data_magnitudes_out_of_range_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        tiny(override)


@pytest.mark.parametrize(
    "percentiles",
    ["[99.5, 0.5]", "[1]", "[1, 2, 3]", "[50, 50]", "[-1, 99]", "[1, 101]", "[0, NaN]", '["a", 99]', "[true, 99]"],
)
def test_percentiles_must_be_low_below_high_within_0_100(percentiles):
    with pytest.raises(ConfigError, match=r"^data\.percentiles must be \[low, high\] with 0 <= low < high <= 100"):
        tiny(f"data.percentiles={percentiles}")


@pytest.mark.parametrize(
    "override",
    [
        "augment.flip_prob=0",
        "augment.intensity_prob=1",
        "dae.noise.morph_prob=0",
        "augment.scale=0",
        "augment.scale=0.99",
        "augment.noise_std=0",
        "augment.rotation_deg=180",
        "data.jitter_mm=0",
        "assn.min_lr_fraction=0",
        "prsn.min_lr_fraction=1",
        "assn.grad_clip=0",
        "assn.warmup_steps=0",
        "prsn.ce_weight=0",
        "assn.beta=0",
        "prsn.lambda_t2=0",
        "runtime.num_threads=0",
        "runtime.checkpoint_every=1",
        "runtime.log_every=1",
        "seed=0",
        "prsn.seed=0",
        "data.percentiles=[0, 100]",
        "data.crop_size=64",
        "data.coarse_size=48",
    ],
)
def test_values_at_the_edges_of_the_ranges_are_accepted(override):
    key, text = override.split("=", 1)
    node = tiny(override)
    for part in key.split("."):
        node = node[part]
    assert node == json.loads(text)


# ----------------------------------------------------------------------------------------------------------
# Sizes the networks read
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, match",
    [
        # tiny: 3-level features everywhere -> sizes must be multiples of 4
        (["data.crop_size=34"], r"^data\.crop_size must be divisible by 4 .*dae\.config.*got 34; use 32 or 36$"),
        (["data.coarse_size=30"], r"^data\.coarse_size must be divisible by 4 .*localizer\.config.*got 30"),
        # the PRSN alone with 5 levels reads the 40 px crops: multiples of 16
        (["data.crop_size=40", "prsn.config.features=[4, 8, 16, 32, 64]"], r"divisible by 16 .*prsn\.config"),
        # a baseline variant's network counts too (the U-Net the unet_bssfp variant trains)
        (
            ["data.crop_size=40", 'assn.variant="unet_bssfp"', "assn.config.features=[4, 8, 16, 32, 64]"],
            r"divisible by 16 .*assn\.config",
        ),
        # divisible, but a 1 x 1 bottleneck, which instance norm cannot normalise
        (["data.coarse_size=16", "localizer.config.features=[4, 8, 16, 32, 64]"], r"1 x 1 bottleneck"),
    ],
)
def test_sizes_that_do_not_fit_the_networks_that_read_them_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny(*overrides)


def test_each_size_is_checked_against_its_own_networks():
    # the localiser reads coarse_size only, the other stages crop_size only
    config = tiny("data.coarse_size=36", "localizer.config.features=[4, 8, 16]", "prsn.config.features=[4, 8]")
    assert config["data"]["coarse_size"] == 36
    assert tiny("data.crop_size=48", "prsn.config.features=[4, 8, 16, 32, 64]")["data"]["crop_size"] == 48


# ----------------------------------------------------------------------------------------------------------
# The CLI: one line, exit code 2, nothing trained
# ----------------------------------------------------------------------------------------------------------
CLI_CASES: List[tuple] = [
    ({"base": 5}, "base must be the name or path of a config"),
    ({"base": "loop.json"}, "its base chain loops"),
    ({"base": "tiny", "seed": -1}, "seed must be an integer >= 0"),
    ({"base": "tiny", "assn": {"lr": float("nan")}}, "assn.lr must be a finite number > 0"),
    ({"base": "tiny", "data": {"crop_size": 34}}, "data.crop_size must be divisible by 4"),
    ({"base": "tiny", "data": {"percentiles": [99.5, 0.5]}}, "data.percentiles must be [low, high]"),
]


@pytest.mark.parametrize("content, expected", CLI_CASES, ids=[c[1].split()[0] for c in CLI_CASES])
def test_the_cli_refuses_a_bad_config_in_one_line_before_training(content, expected, tmp_path, capsys):
    config = write(tmp_path / "loop.json", content)
    data = tmp_path / "data"  # never read: the config is refused first
    data.mkdir()
    runs = tmp_path / "runs"
    args = ["cv", "--config", str(config), "--data", str(data), "--runs-dir", str(runs), "--run-name", "bad"]
    assert cli_main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (runs / "bad").exists()
