"""Recipes: every shipped recipe loads, and bad recipes fail with the key and file named."""

from pathlib import Path

import pytest

from litv2cli import recipe as config
from litv2cli.cli.train import _pretrain_base
from litv2cli.recipe import (DEMO_RECIPE, PAPER_VARIANTS, RECIPES_DIR, VARIANT_NAMES, Recipe, default_recipe,
                             load_recipe, save_recipe)
from litv2cli.errors import UserError

REPO = Path(__file__).resolve().parent.parent

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))


def test_recipes_directory_is_not_empty():
    assert len(SHIPPED) >= 4


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path: Path):
    recipe = load_recipe(path)
    assert recipe.variant in ("t", "s", "m", "b")
    assert recipe.res[0] % 32 == 0 and recipe.res[1] % 32 == 0


def test_paper_recipes_hold_the_paper_values():
    expected_drop_path = {"s": 0.2, "m": 0.3, "b": 0.5}
    for variant, drop_path in expected_drop_path.items():
        recipe = load_recipe(RECIPES_DIR / f"litv2-{variant}.yaml")
        assert recipe.drop_path == drop_path
        assert (recipe.epochs, recipe.warmup_epochs, recipe.weight_decay, recipe.clip_grad) == (300, 20, 0.05, 5.0)
        assert recipe.scaled_lrs(1024) == pytest.approx((1e-3, 1e-6, 1e-5))
        assert (recipe.mixup, recipe.cutmix, recipe.label_smoothing, recipe.reprob) == (0.8, 1.0, 0.1, 0.25)
        assert recipe.auto_augment == "rand-m9-mstd0.5-inc1" and recipe.interpolation == "bicubic"
        assert recipe.offset_lr_scale == 0.01 and recipe.eval_crop_pct == 0.875


def test_finetune_recipe_holds_the_official_384_schedule():
    recipe = load_recipe(RECIPES_DIR / "litv2-b-384-finetune.yaml")
    assert recipe.variant == "b" and recipe.res == (384, 384) and recipe.drop_path == 0.5
    assert (recipe.epochs, recipe.warmup_epochs, recipe.weight_decay) == (30, 5, 1e-8)
    assert recipe.scaled_lrs(512) == pytest.approx((2e-5, 2e-8, 2e-7))
    assert recipe.eval_crop_pct is None


def test_lr_scales_linearly_with_total_batch():
    recipe = Recipe()
    assert recipe.scaled_lrs(256)[0] == pytest.approx(1e-3 / 4)
    assert recipe.scaled_lrs(8 * 128 * 2)[0] == pytest.approx(2e-3)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("variant: s\nlerning_rate: 0.1\n", "unknown recipe key 'lerning_rate'"),
        ("alpha: 1.5\n", "'alpha'"),
        ("epochs: many\n", "'epochs'"),
        ("res: 225\n", "'res'"),
        ("window: [0, 0, 0, 1]\n", "'window'"),
        ("variant: x\n", "'variant'"),
        ("- a\n- b\n", "mapping"),
        ("alpha: [\n", "not valid YAML"),
    ],
)
def test_bad_recipe_is_one_error_naming_key_and_file(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_recipe(path)
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"alpha: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError):
        load_recipe(path)
    assert not marker.exists()


def test_overrides_replace_keys_and_are_validated():
    recipe = Recipe().with_overrides(batch_size=32, alpha=None)
    assert recipe.batch_size == 32 and recipe.alpha == 0.9
    with pytest.raises(UserError, match="alpha"):
        Recipe().with_overrides(alpha=2.0)


def test_saved_recipe_reads_back_identical(tmp_path: Path):
    recipe = Recipe(variant="m", res=(384, 512), window=(0, 0, 4, 1), provenance={"device": "cpu"})
    again = load_recipe(save_recipe(recipe, tmp_path / "r.yaml"))
    assert again == recipe


def test_base_key_inherits_and_overrides(tmp_path: Path):
    (tmp_path / "parent.yaml").write_text("variant: m\nepochs: 10\nwarmup_epochs: 1\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nepochs: 20\n")
    recipe = load_recipe(tmp_path / "child.yaml")
    assert (recipe.variant, recipe.epochs, recipe.warmup_epochs) == ("m", 20, 1)


def test_recipes_ship_inside_the_package_and_the_top_level_folder_is_the_same_one():
    assert RECIPES_DIR.parent == Path(config.__file__).parent
    assert (REPO / "recipes").resolve() == RECIPES_DIR.resolve()
    assert (REPO / "accelerate_config.yaml").resolve() == config.package_file("accelerate_config.yaml").resolve()


def test_variant_names_without_torch_match_the_model_registry():
    from litv2cli.models import VARIANTS

    assert VARIANT_NAMES == tuple(VARIANTS)


@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_a_paper_variant_starts_from_its_shipped_recipe(variant):
    assert default_recipe(variant) == load_recipe(RECIPES_DIR / f"litv2-{variant}.yaml")


def test_a_missing_shipped_recipe_is_an_error_not_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RECIPES_DIR", tmp_path)
    with pytest.raises(UserError, match="litv2-m.yaml is missing"):
        default_recipe("m")


def test_litv2_t_has_no_paper_recipe_and_starts_from_the_defaults():
    assert not (RECIPES_DIR / "litv2-t.yaml").exists()
    assert default_recipe("t") == Recipe(variant="t")


@pytest.mark.parametrize("variant, data, expected, says", [
    (None, "demo", DEMO_RECIPE, "demo recipe"),
    ("t", "demo", DEMO_RECIPE, "demo recipe"),
    ("m", "demo", "litv2-m.yaml", "paper's ImageNet recipe for LITv2-M"),
    (None, "/data/imagenet", "litv2-s.yaml", None),
    ("b", "/data/imagenet", "litv2-b.yaml", None),
])
def test_pretraining_without_a_recipe_picks_and_names_one(variant, data, expected, says):
    recipe, line = _pretrain_base(variant, data)
    assert recipe == load_recipe(RECIPES_DIR / expected)
    assert (line is None) if says is None else (says in line)


def test_litv2_t_on_real_data_says_it_takes_the_defaults():
    recipe, line = _pretrain_base("t", "/data/imagenet")
    assert recipe == Recipe(variant="t") and "no paper recipe" in line


def test_an_odd_batch_with_mixup_is_refused_by_the_recipe_itself():
    """The rule lives in the recipe, so library callers (the search's training proxy) meet it too."""
    base = Recipe(mixup=0.8, cutmix=0.0, batch_size=8)
    with pytest.raises(UserError, match="batch_size 7: Mixup/CutMix pairs images, so the batch must be even"):
        base.with_overrides(batch_size=7)
    assert Recipe(mixup=0.0, cutmix=0.0, batch_size=7).batch_size == 7  # no pairing, no rule


def test_the_cli_names_the_mixup_batch_rule_in_one_line(tmp_path, capsys):
    from litv2cli.cli.main import main

    assert main(["pretrain", "--variant", "s", "--data", str(tmp_path), "--batch-size", "7",
                 "--output", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("litv2: error:"), lines
    assert "batch_size 7: Mixup/CutMix pairs images, so the batch must be even" in lines[0]
    assert not (tmp_path / "run").exists()
