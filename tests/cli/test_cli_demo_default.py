"""`litv2 pretrain --data demo` without a recipe trains the demo recipe, and says so."""

from __future__ import annotations

import os
import subprocess
import sys

from litv2cli.recipe import DEMO_RECIPE, RECIPES_DIR, load_recipe

QUIET = ["--workers", "0", "--no-progress", "--log-with", "none"]


def test_pretrain_on_the_demo_data_without_a_recipe_uses_the_demo_recipe(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "litv2cli.cli.main", "pretrain", "--data", "demo", "--max-steps", "1",
                           "--batch-size", "8", "--output", str(out), *QUIET], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if "without --recipe" in line]
    assert len(said) == 1 and DEMO_RECIPE in said[0]
    demo = load_recipe(RECIPES_DIR / DEMO_RECIPE)
    assert load_recipe(out / "config.yaml") == demo.with_overrides(batch_size=8, num_classes=10)
