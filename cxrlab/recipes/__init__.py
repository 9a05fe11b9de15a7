"""YAML recipes for the published pipelines, validated by a pydantic schema (unknown keys are errors).

>>> recipe = load_recipe("cs230-diagnosis", ["model.backbone=densenet121"])
"""

from cxrlab.recipes.loader import (
    apply_overrides,
    list_recipes,
    load_recipe,
    recipe_path,
    recipe_yaml,
    save_recipe,
    validate_recipe,
)
from cxrlab.recipes.schema import Recipe

__all__ = ["Recipe", "apply_overrides", "list_recipes", "load_recipe", "recipe_path", "recipe_yaml", "save_recipe",
           "validate_recipe"]
