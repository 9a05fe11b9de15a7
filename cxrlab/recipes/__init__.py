"""YAML recipes for the published pipelines, validated by a pydantic schema (unknown keys are errors).

>>> recipe = load_recipe("cs230-diagnosis", ["model.backbone=densenet121"])
"""

from cxrlab.recipes.loader import (
    RECIPE_KINDS,
    apply_overrides,
    list_recipes,
    load_recipe,
    recipe_kind,
    recipe_path,
    recipe_yaml,
    save_recipe,
    validate_recipe,
)
from cxrlab.recipes.schema import Recipe

__all__ = ["RECIPE_KINDS", "Recipe", "apply_overrides", "list_recipes", "load_recipe", "recipe_kind", "recipe_path",
           "recipe_yaml", "save_recipe", "validate_recipe"]
