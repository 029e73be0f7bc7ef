"""`litv2 eval`: one checkpoint, one validation split, exact top-1/top-5 over all processes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from litv2cli.recipe import Recipe
from litv2cli.train.loop import eval_transform
from litv2cli.data import open_split
from litv2cli.train.evaluate import evaluate
from litv2cli.train.deepspeed_config import pin_deepspeed_to_cpu_without_cuda
from litv2cli.models import create_model
from litv2cli.precision import resolve_precision
from litv2cli.train.spec import RunSpec
from litv2cli.weights.reading import load_into, read_state_dict


def run_evaluation(spec: RunSpec) -> dict:
    recipe = Recipe.model_validate(spec.recipe)
    pin_deepspeed_to_cpu_without_cuda()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=resolve_precision(spec.precision))
    dataset = open_split(spec.data, spec.val_split, image_column=spec.image_column, label_column=spec.label_column)
    dataset.set_transform(eval_transform(recipe))
    model = create_model(recipe.variant, num_classes=recipe.num_classes or dataset.num_classes,
                         alpha=recipe.alpha, local_ws=tuple(recipe.window))
    load_into(model, read_state_dict(spec.init_from), source=str(spec.init_from), allow_new_head=False)
    model = accelerator.prepare(model)
    # The loss training's evaluation reports (Trainer.run_eval in train/loop.py): plain cross-entropy, summed, then
    # averaged over every image of every process.
    result = evaluate(accelerator, model, dataset, batch_size=recipe.batch_size, workers=spec.workers,
                      criterion=nn.CrossEntropyLoss(reduction="sum"))
    result.update(checkpoint=str(spec.init_from), resolution=f"{recipe.res[0]}x{recipe.res[1]}",
                  crop_pct=recipe.eval_crop_pct, processes=accelerator.num_processes)
    if accelerator.is_main_process and spec.output:
        Path(spec.output).write_text(json.dumps(result, indent=2))
    return result
