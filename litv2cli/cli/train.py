"""`litv2 pretrain`, `litv2 finetune` and `litv2 eval`: one engine, two recipes, one evaluator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from litv2cli.cli.options import (Alpha, JsonOutput, Window, check_alpha, check_choice, check_variant, parse_resolution,
                                  parse_window)
from litv2cli.errors import UserError

if TYPE_CHECKING:
    from litv2cli.recipe import Recipe

app = typer.Typer()

# Options shared by pretrain and finetune, declared once.
Data = Annotated[str | None, typer.Option("--data", help="'demo' (built in), an ImageFolder root, a save_to_disk "
                                          "dataset, Parquet files, or a hub dataset id.")]
RecipeFile = Annotated[Path | None, typer.Option("--recipe", help="Recipe YAML; flags override its keys.")]
Gpus = Annotated[int | None, typer.Option("--gpus", help="Processes per node (GPUs; CPU processes on gloo without GPUs).")]
Nodes = Annotated[int, typer.Option("--nodes", help="Number of machines.")]
NodeRank = Annotated[int, typer.Option("--node-rank", help="Rank of this machine.")]
MainAddr = Annotated[str | None, typer.Option("--main-addr", help="Address of the machine with --node-rank 0.")]
MainPort = Annotated[int | None, typer.Option("--main-port", help="Rendezvous port.")]
DeepSpeed = Annotated[str | None, typer.Option("--deepspeed", help="zero1, zero2, zero3, zero3-offload or a JSON file.")]
ImageColumn = Annotated[str | None, typer.Option("--image-column", help="Image column of an Arrow/Parquet/hub dataset.")]
LabelColumn = Annotated[str | None, typer.Option("--label-column", help="Label column of an Arrow/Parquet/hub dataset.")]
Streaming = Annotated[bool, typer.Option("--streaming", help="Read a hub or Parquet dataset as a stream instead of "
                                         "preparing it in the datasets cache (for data larger than the disk).")]
Workers = Annotated[int | None, typer.Option("--workers", help="DataLoader workers per process (default: the cores).")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<variant>-<time>).")]
SaveEvery = Annotated[int, typer.Option("--save-every", help="Checkpoint every N optimizer steps (0: epoch ends only).")]
Keep = Annotated[int, typer.Option("--keep", help="Checkpoints kept (newest).")]
Resume = Annotated[str | None, typer.Option("--resume", help="'auto' (newest good checkpoint in --output) or a path.")]
LogWith = Annotated[str | None, typer.Option("--log-with", help="tensorboard, wandb or mlflow (default tensorboard if installed).")]
Res = Annotated[str | None, typer.Option("--res", help="Training resolution, 224 or HxW.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Per-device batch size.")]
Accum = Annotated[int | None, typer.Option("--accum", help="Gradient accumulation steps.")]
Epochs = Annotated[int | None, typer.Option("--epochs", help="Epochs (overrides the recipe).")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")]
Lr = Annotated[float | None, typer.Option("--lr", help="Base LR at the recipe's reference batch.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
GradCkpt = Annotated[bool, typer.Option("--grad-ckpt", help="Activation checkpointing (less memory, more compute).")]
ChannelsLast = Annotated[bool, typer.Option("--channels-last", help="channels_last memory format.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
Ema = Annotated[bool, typer.Option("--ema", help="Keep an EMA of the weights (model_ema.safetensors).")]
Precision = Annotated[str, typer.Option("--precision", help="auto (bf16/fp16 on GPU, none on CPU), no, bf16 or fp16.")]
SkipNonFinite = Annotated[int, typer.Option("--skip-nonfinite", help="Tolerate this many non-finite losses.")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bar (logs only).")]
LogEvery = Annotated[int, typer.Option("--log-every", help="Write a metrics line every N optimizer steps.")]


def _resolve_logging(log_with: str | None) -> list[str]:
    if log_with is not None:
        names = [n.strip() for n in log_with.split(",") if n.strip()]
        unknown = [n for n in names if n not in ("tensorboard", "wandb", "mlflow", "none")]
        if unknown:
            raise UserError(f"--log-with {log_with}: unknown tracker {unknown[0]!r}; use tensorboard, wandb or mlflow")
        return [n for n in names if n != "none"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return []
    return ["tensorboard"]


def check_precision(precision: str) -> None:
    from litv2cli.precision import PRECISIONS

    check_choice("--precision", precision, PRECISIONS)


def _check_one_step_fits(data: str, train_size: int, recipe: Recipe, world_size: int) -> None:
    """An epoch is truncated to whole steps of every process; refuse a split smaller than one."""
    per_step = recipe.batch_size * recipe.accum * world_size
    if train_size and train_size < per_step:
        raise UserError(f"--data {data}: the training split has {train_size} images, fewer than one step of "
                        f"{recipe.batch_size} (batch) x {recipe.accum} (accum) x {world_size} (processes); "
                        "lower --batch-size")


def _build_recipe(base: Recipe, *, res, batch_size, accum, epochs, lr, seed, alpha, window, ema,
                  num_classes=None) -> Recipe:
    overrides = dict(batch_size=batch_size, accum=accum, epochs=epochs, base_lr=lr, seed=seed,
                     alpha=check_alpha(alpha), num_classes=num_classes)
    if res is not None:
        overrides["res"] = parse_resolution(res)
    if window is not None:
        overrides["window"] = parse_window(window)
    if ema:
        overrides["ema"] = True
    return base.with_overrides(**overrides)


def _launch_and_spec(*, recipe: Recipe, data, image_column, label_column, streaming, gpus, nodes, node_rank,
                     main_addr, main_port, deepspeed, workers, output, save_every, keep, resume, log_with, max_steps,
                     compile, grad_ckpt, channels_last, precision, skip_nonfinite, no_progress, init_from, prefix,
                     log_every=10, epochs=None):
    from litv2cli.run import launch
    from litv2cli.run import start as runner
    from litv2cli.train import deepspeed_config as dsconfig
    from litv2cli.recipe import Recipe
    from litv2cli.data import describe_source
    from litv2cli.train.spec import RunSpec, default_run_dir

    if data is None:
        raise UserError("--data is required: 'demo', an ImageFolder root, a saved dataset, Parquet files or a hub id")
    check_precision(precision)
    if keep < 1 or save_every < 0 or log_every < 1:
        raise UserError("--keep and --log-every must be >= 1 and --save-every >= 0")
    if resume not in (None, "auto") and not Path(resume).exists():
        raise UserError(f"--resume {resume}: no such checkpoint")
    info = describe_source(data, image_column=image_column, label_column=label_column, streaming=streaming)
    if streaming and not info.train_size:
        raise UserError(f"--data {data}: the stream does not record how many training images it holds, which "
                        "--streaming needs for the epoch length; drop --streaming to read the dataset through the cache")
    num_classes = recipe.num_classes or info.num_classes
    if recipe.num_classes and info.num_classes and recipe.num_classes != info.num_classes:
        raise UserError(f"the recipe has {recipe.num_classes} classes but {data} has {info.num_classes}")
    ds_path = None
    if deepspeed:
        ds_path = dsconfig.resolve_config_path(deepspeed)
        ds_cfg = dsconfig.read_config(ds_path)
        dsconfig.check_recipe(recipe, ds_cfg)
        if skip_nonfinite:
            raise UserError("--skip-nonfinite is not available with DeepSpeed, which steps inside backward")
    plan = launch.plan(gpus, nodes, node_rank, main_addr, main_port)
    _check_one_step_fits(data, info.train_size, recipe, plan.processes * plan.nodes)
    out = (output or default_run_dir(recipe.variant, prefix)).resolve()
    runner.prepare_run_dir(out, resuming=resume is not None, first_process=plan.first_process)
    if resume is not None and (out / "run.json").is_file():
        # The run goes on with its own recipe; only a new length, asked for explicitly, applies.
        previous = Recipe.model_validate(RunSpec.load(out / "run.json").recipe)
        recipe = previous.with_overrides(epochs=epochs)
    recipe = recipe.with_overrides(num_classes=num_classes)
    spec = RunSpec(
        recipe=recipe.model_dump(mode="json"), data=data, output=str(out), image_column=info.image_column,
        label_column=info.label_column, train_split="train", val_split=info.val_split, streaming=streaming,
        train_size=info.train_size,
        workers=workers if workers is not None else launch.default_workers(plan), save_every=save_every,
        keep=keep, resume=resume, log_with=_resolve_logging(log_with), max_steps=max_steps, compile=compile,
        grad_ckpt=grad_ckpt, channels_last=channels_last, precision=precision,
        deepspeed=str(ds_path) if ds_path else None, init_from=init_from, skip_nonfinite=skip_nonfinite,
        progress=not no_progress, log_every=log_every,
    )
    typer.echo(f"run directory: {out}")
    return runner.start(spec, recipe, plan)


@app.command()
def pretrain(
    variant: Annotated[str | None, typer.Option("--variant", "-v", help="t, s, m or b (default: the recipe's, else s).")] = None,
    recipe: RecipeFile = None, data: Data = None, gpus: Gpus = None, nodes: Nodes = 1, node_rank: NodeRank = 0,
    main_addr: MainAddr = None, main_port: MainPort = None, deepspeed: DeepSpeed = None,
    image_column: ImageColumn = None, label_column: LabelColumn = None, streaming: Streaming = False,
    workers: Workers = None, output: Output = None, save_every: SaveEvery = 0, keep: Keep = 3, resume: Resume = None,
    log_with: LogWith = None, res: Res = None, batch_size: BatchSize = None, accum: Accum = None,
    epochs: Epochs = None, max_steps: MaxSteps = None, lr: Lr = None, compile: Compile = False,
    grad_ckpt: GradCkpt = False, channels_last: ChannelsLast = False, seed: Seed = None,
    alpha: Alpha = None, window: Window = None, ema: Ema = False, precision: Precision = "auto",
    skip_nonfinite: SkipNonFinite = 0, no_progress: NoProgress = False, log_every: LogEvery = 10,
) -> int:
    """Pretrain LITv2 (the paper's ImageNet recipe; with --data demo, the demo's) on 1..N processes and nodes."""
    from litv2cli.recipe import load_recipe

    if recipe is not None:
        base = load_recipe(recipe)
        if variant is not None:
            base = base.with_overrides(variant=check_variant(variant))
    else:
        base, origin = _pretrain_base(check_variant(variant) if variant is not None else None, data)
        if origin:
            typer.echo(origin)
    built = _build_recipe(base, res=res, batch_size=batch_size, accum=accum, epochs=epochs, lr=lr, seed=seed,
                          alpha=alpha, window=window, ema=ema)
    return _launch_and_spec(
        recipe=built, data=data, image_column=image_column, label_column=label_column, streaming=streaming,
        gpus=gpus, nodes=nodes, node_rank=node_rank, main_addr=main_addr, main_port=main_port, deepspeed=deepspeed,
        workers=workers, output=output, save_every=save_every, keep=keep, resume=resume, log_with=log_with,
        max_steps=max_steps, compile=compile, grad_ckpt=grad_ckpt, channels_last=channels_last, precision=precision,
        skip_nonfinite=skip_nonfinite, no_progress=no_progress, init_from=None, prefix="", log_every=log_every,
        epochs=epochs)


def _pretrain_base(variant: str | None, data: str | None) -> tuple[Recipe, str | None]:
    """The recipe of a pretraining without --recipe, and a line saying which it is when that is not
    the obvious one. A named S, M or B variant takes the paper's recipe, also on the demo data;
    otherwise `--data demo` takes the demo recipe (LITv2-T, minutes on a CPU) and other data the
    paper's S recipe (LITv2-T, ours, has no paper recipe: the defaults with its sizes)."""
    from litv2cli.recipe import DEMO_RECIPE, PAPER_VARIANTS, RECIPES_DIR, default_recipe, shipped_recipe

    if data == "demo" and variant in (None, "t"):
        return shipped_recipe(DEMO_RECIPE), f"--data demo without --recipe: the demo recipe {RECIPES_DIR / DEMO_RECIPE}"
    if variant is None:
        return default_recipe("s"), None
    if variant in PAPER_VARIANTS:
        line = (f"--data demo with --variant {variant}: the paper's ImageNet recipe for LITv2-{variant.upper()} "
                f"(pass --recipe {RECIPES_DIR / DEMO_RECIPE} for the demo's)") if data == "demo" else None
        return default_recipe(variant), line
    return default_recipe(variant), (f"LITv2-{variant.upper()} has no paper recipe: the defaults (the paper's "
                                     "LITv2-S recipe) with its sizes")


def _finetune_base(source, variant: str, recipe_path: Path | None, resolution: tuple[int, int]) -> Recipe:
    """The fine-tune recipe: the user's, else a shipped one for this variant and size, else the
    official 384 fine-tune schedule applied to this variant's architecture settings."""
    from litv2cli.recipe import RECIPES_DIR, default_recipe, load_recipe, shipped_recipe

    if recipe_path is not None:
        base = load_recipe(recipe_path)
    else:
        name = f"litv2-{variant}-{resolution[0]}-finetune.yaml"
        base = shipped_recipe(name if (RECIPES_DIR / name).is_file() else "litv2-b-384-finetune.yaml")
    arch = source.recipe or default_recipe(variant)
    return base.with_overrides(variant=variant, alpha=arch.alpha, window=arch.window, drop_path=arch.drop_path,
                               res=resolution)


@app.command()
def finetune(
    from_: Annotated[str, typer.Option("--from", help="Our run directory or model.safetensors, a DeepSpeed "
                                       "checkpoint, or an official .pth file.")],
    res: Annotated[str, typer.Option("--res", help="Fine-tuning resolution, 384 or HxW (multiple of 32).")] = "384",
    variant: Annotated[str | None, typer.Option("--variant", "-v", help="Expected variant (checked against the checkpoint).")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="New class count: re-initialises the head.")] = None,
    recipe: RecipeFile = None, data: Data = None, gpus: Gpus = None, nodes: Nodes = 1, node_rank: NodeRank = 0,
    main_addr: MainAddr = None, main_port: MainPort = None, deepspeed: DeepSpeed = None,
    image_column: ImageColumn = None, label_column: LabelColumn = None, streaming: Streaming = False,
    workers: Workers = None, output: Output = None, save_every: SaveEvery = 0, keep: Keep = 3, resume: Resume = None,
    log_with: LogWith = None, batch_size: BatchSize = None, accum: Accum = None, epochs: Epochs = None,
    max_steps: MaxSteps = None, lr: Lr = None, compile: Compile = False, grad_ckpt: GradCkpt = False,
    channels_last: ChannelsLast = False, seed: Seed = None, ema: Ema = False, precision: Precision = "auto",
    skip_nonfinite: SkipNonFinite = 0, no_progress: NoProgress = False, log_every: LogEvery = 10,
) -> int:
    """Fine-tune a checkpoint at a new resolution and/or on new classes (same engine as pretrain)."""
    resolution = parse_resolution(res)
    if num_classes is not None and num_classes < 1:
        raise UserError(f"--num-classes {num_classes} must be at least 1")
    from litv2cli.models import create_model
    from litv2cli.weights.inspect import inspect_checkpoint
    from litv2cli.weights.reading import load_into

    source = inspect_checkpoint(from_, variant=check_variant(variant) if variant else None)
    base = _finetune_base(source, source.variant, recipe, resolution)
    built = _build_recipe(base, res=None, batch_size=batch_size, accum=accum, epochs=epochs, lr=lr, seed=seed,
                          alpha=None, window=None, ema=ema, num_classes=num_classes)
    # Check the weights fit before any process starts (a wrong variant fails here, not in N workers).
    probe = create_model(built.variant, num_classes=num_classes or source.num_classes or 1,
                         alpha=built.alpha, local_ws=tuple(built.window))
    report = load_into(probe, source.state_dict, source=from_, allow_new_head=True)
    typer.echo(f"checkpoint {from_}: LITv2-{source.variant.upper()}, {report.summary()}")
    del probe, source
    return _launch_and_spec(
        recipe=built, data=data, image_column=image_column, label_column=label_column, streaming=streaming,
        gpus=gpus, nodes=nodes, node_rank=node_rank, main_addr=main_addr, main_port=main_port, deepspeed=deepspeed,
        workers=workers, output=output, save_every=save_every, keep=keep, resume=resume, log_with=log_with,
        max_steps=max_steps, compile=compile, grad_ckpt=grad_ckpt, channels_last=channels_last, precision=precision,
        skip_nonfinite=skip_nonfinite, no_progress=no_progress, init_from=str(Path(from_).resolve()),
        prefix="finetune-", log_every=log_every, epochs=epochs)


@app.command("eval")
def evaluate_command(
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="Our run, model.safetensors, DeepSpeed checkpoint or official .pth.")],
    data: Data = None,
    variant: Annotated[str | None, typer.Option("--variant", "-v", help="Expected variant (checked).")] = None,
    res: Annotated[str | None, typer.Option("--res", help="Evaluation resolution (default: the run's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Per-process batch size.")] = 64,
    gpus: Gpus = None, workers: Workers = None, image_column: ImageColumn = None, label_column: LabelColumn = None,
    precision: Precision = "auto", json_output: JsonOutput = False,
) -> int:
    """Top-1/top-5 of a checkpoint on a validation split, with the official eval transform."""
    import tempfile

    from litv2cli.run import launch
    from litv2cli.run import start as runner
    from litv2cli.recipe import default_recipe
    from litv2cli.data import describe_source
    from litv2cli.train.spec import RunSpec
    from litv2cli.weights.inspect import inspect_checkpoint

    if data is None:
        raise UserError("--data is required (the dataset whose validation split is evaluated)")
    check_precision(precision)
    source = inspect_checkpoint(checkpoint, variant=check_variant(variant) if variant else None)
    recipe = source.recipe or default_recipe(source.variant)
    overrides = dict(batch_size=batch_size, num_classes=source.num_classes)
    if res is not None:
        overrides["res"] = parse_resolution(res)
    recipe = recipe.with_overrides(**overrides)
    info = describe_source(data, image_column=image_column, label_column=label_column)
    if info.num_classes and info.num_classes != source.num_classes:
        raise UserError(f"{checkpoint} predicts {source.num_classes} classes but {data} has {info.num_classes}")
    del source
    plan = launch.plan(gpus, 1, 0, None, None)
    with tempfile.TemporaryDirectory(prefix="litv2-eval-") as tmp:
        result_path = Path(tmp) / "result.json"
        spec = RunSpec(recipe=recipe.model_dump(mode="json"), data=data, output=str(result_path),
                       image_column=info.image_column, label_column=info.label_column, val_split=info.val_split,
                       workers=workers if workers is not None else launch.default_workers(plan),
                       precision=precision, init_from=str(Path(checkpoint).resolve()), task="eval", progress=False)
        code = runner.run(spec, plan, Path(tmp) / "run.json")
        if code:
            return code
        result = json.loads(result_path.read_text())
    if json_output:
        typer.echo(json.dumps(result))
    else:
        unreadable = f"; {result['skipped']} unreadable images skipped" if result.get("skipped") else ""
        typer.echo(f"{checkpoint}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                   f"loss {result['loss']:.4f}  on {result['count']} images at {result['resolution']} (crop_pct {result['crop_pct']}, "
                   f"{result['processes']} process(es){unreadable})")
    return 0
