import pytest

from colorgan.recipes import RecipeError, dumps_toml, load_recipe, parse_override
from colorgan.train import GAN_SCHEMA, PRETRAIN_SCHEMA


def test_every_problem_is_listed_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[data]\nsize = "big"\nbsz = 4\n[model]\npretrained = 3\n[fit]\nlr_max = 0\n[optimiser]\nx = 1\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path, PRETRAIN_SCHEMA)
    msg = str(err.value)
    assert str(path) in msg and "5 problem(s)" in msg
    for part in ["[data] size = 'big' should be int", "unknown key 'bsz'; did you mean 'bs'",
                 "[model] pretrained = 3 should be bool", "[fit] lr_max = 0 should be", "unknown section [optimiser]"]:
        assert part in msg


def test_overrides_and_defaults_resolve(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[fit]\nn_epoch = 2\n")
    recipe = load_recipe(path, GAN_SCHEMA, ["gan.lambda_l1=50", "gan.adv_loss=lsgan", "fit.lr_max=3e-4"])
    assert recipe["gan"]["lambda_l1"] == 50 and recipe["gan"]["adv_loss"] == "lsgan"
    assert recipe["fit"] == {**recipe["fit"], "n_epoch": 2, "lr_max": 3e-4}
    assert recipe["critic"]["n_filters"] == 64 and recipe["data"]["size"] == 256  # defaults from signatures


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe({"fit": {"n_epoch": 3, "lr_max": 1e-3}, "model": {"weights": "w.pth"}}, PRETRAIN_SCHEMA)
    path = tmp_path / "resolved.toml"
    path.write_text(dumps_toml(recipe))
    assert load_recipe(path, PRETRAIN_SCHEMA) == recipe


@pytest.mark.parametrize("text", ["fit", "fit=3", "n_epoch=3", "fit.=3"])
def test_malformed_override(text):
    with pytest.raises(RecipeError, match="section.key=value"):
        parse_override(text)


def test_missing_and_invalid_toml(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml", PRETRAIN_SCHEMA)
    bad = tmp_path / "bad.toml"
    bad.write_text("[fit\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad, PRETRAIN_SCHEMA)


@pytest.mark.parametrize("name", ["quickstart", "resnet18-256", "quickstart-gan", "resnet18-256-gan"])
def test_shipped_recipes_are_valid(name):
    from pathlib import Path
    schema = GAN_SCHEMA if name.endswith("gan") else PRETRAIN_SCHEMA
    load_recipe(Path(__file__).parents[1] / "recipes" / f"{name}.toml", schema)


RECIPES = sorted((__import__("pathlib").Path(__file__).parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    "Listed from the folder, so a new recipe is checked too; '-gan' recipes configure stage two."
    schema = GAN_SCHEMA if path.stem.endswith("-gan") else PRETRAIN_SCHEMA
    assert load_recipe(path, schema)["fit"]["n_epoch"] >= 1


def test_the_recipes_folder_is_found():
    assert len(RECIPES) >= 6


def test_weight_decay_has_one_home():
    "wd is the Learner's ([learner] wd); fit_one_cycle's own wd would override it silently, so [fit] has none."
    for schema in (PRETRAIN_SCHEMA, GAN_SCHEMA):
        assert load_recipe(None, schema, ["fit.n_epoch=1", "learner.wd=0.1"])["learner"]["wd"] == 0.1
        with pytest.raises(RecipeError, match="unknown key 'wd'"):
            load_recipe(None, schema, ["fit.n_epoch=1", "fit.wd=0.1"])
