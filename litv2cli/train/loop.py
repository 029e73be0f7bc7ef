"""The one training loop, shared by pretraining, fine-tuning and the search's training proxy.

Plain PyTorch around accelerate, as in accelerate's own examples: `prepare`, `backward`,
`accumulate`, `save_state`. Exact resume is ours: the sampler owns (seed, epoch, position),
each sample's augmentation is seeded by (seed, epoch, index), and checkpoints hold the RNG
states, so an interrupted and resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs, set_seed
from safetensors.torch import save_file
from torch import nn

from litv2cli.train import checkpoints as checkpointing
from litv2cli.train import deepspeed_config as dsconfig
from litv2cli.train.checkpoints import TrainState
from litv2cli.recipe import Recipe
from litv2cli.data import build_eval_transform, build_train_transform, collate_skip_corrupt, open_split
from litv2cli.data.loading import StopSafeLoader
from litv2cli.train.evaluate import evaluate
from litv2cli.train.deepspeed_config import pin_deepspeed_to_cpu_without_cuda
from litv2cli.train.losses import build_loss
from litv2cli.models import create_model, variant_spec
from litv2cli.train.optim import build_optimizer, build_scheduler
from litv2cli.precision import as_model_input, compute_dtype, resolve_precision, step_autocast
from litv2cli.train.progress import TrainProgress
from litv2cli.train.spec import MetricsLog, RunSpec
from litv2cli.data.sampler import ResumableDistributedSampler
from litv2cli.data.seeding import SeededItems
from litv2cli.weights.reading import check_deepspeed_shards, initialise_from

log = logging.getLogger(__name__)

EvalCallback = Callable[[int, dict[str, float]], bool]


class NonFiniteLoss(RuntimeError):
    """Raised on every rank when the loss stops being finite more often than allowed."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); earlier checkpoints are intact."""


class ResumeMismatch(RuntimeError):
    """The checkpoint cannot continue this run as configured (e.g. another world size)."""


def eval_transform(recipe: Recipe) -> Callable:
    """The recipe's evaluation transform: one definition for eval during training and `litv2 eval`."""
    return build_eval_transform(recipe.res, crop_pct=recipe.eval_crop_pct, interpolation=recipe.interpolation,
                                mean=recipe.mean, std=recipe.std)


def make_accelerator(spec: RunSpec, recipe: Recipe, run_dir: Path, hidden_size: int) -> Accelerator:
    pin_deepspeed_to_cpu_without_cuda()
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    precision = resolve_precision(spec.precision)
    kwargs: dict[str, Any] = dict(
        mixed_precision=precision,
        gradient_accumulation_steps=recipe.accum,
        project_dir=str(run_dir),
        log_with=spec.log_with or None,
    )
    if spec.deepspeed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        config = dsconfig.fill_config(
            dsconfig.read_config(Path(spec.deepspeed)), micro_batch=recipe.batch_size, accum=recipe.accum,
            world_size=world_size, clip_grad=recipe.clip_grad, precision=precision, hidden_size=hidden_size,
            origin=spec.deepspeed,
        )
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=config)
        if not torch.cuda.is_available():
            # Without this accelerate finds no backend on CPU and believes it runs alone while
            # DeepSpeed has already joined the ranks over gloo.
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    else:
        kwargs["cpu"] = not torch.cuda.is_available()
    return Accelerator(**kwargs)


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves at the next step boundary and exits cleanly.

    A second signal more than `grace` seconds after the first exits at once. Signals closer
    together are one event: a launcher or scheduler often delivers the same pre-emption to
    every process of the job, and a worker may receive it twice.
    """

    grace = 1.0

    def __init__(self) -> None:
        self.requested = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested and now - self._first > self.grace:
            os._exit(128 + signum)
        if not self.requested:
            self.requested, self._first = True, now

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_model(recipe: Recipe, num_classes: int, spec: RunSpec, say: Callable[[str], None]) -> nn.Module:
    model = create_model(
        recipe.variant, num_classes=num_classes, drop_path_rate=recipe.drop_path,
        alpha=recipe.alpha, local_ws=tuple(recipe.window),
    )
    if spec.init_from:
        say(f"initialised from {spec.init_from}: {initialise_from(model, spec.init_from).summary()}")
    if spec.grad_ckpt:
        enable_activation_checkpointing(model)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def gather_with_owner(model: nn.Module) -> None:
    """ZeRO-3 gathers a layer's parameters when that layer's forward is called. HiLo's fast paths
    read its linear layers' weights without calling them (one GEMM over several layers, output
    projections added in place), so each HiLo module asks for its layers' parameters itself."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

    from litv2cli.models.hilo import HiLo

    for module in model.modules():
        if isinstance(module, HiLo):
            for parameter in module.parameters():
                register_external_parameter(module, parameter)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every transformer block in backward: memory for compute, no model changes."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    apply_activation_checkpointing(model, check_fn=lambda m: type(m).__name__.endswith("Block"))


def train(spec: RunSpec, *, on_eval: EvalCallback | None = None,
          stop_hint: str = "resume with --resume auto") -> dict[str, Any]:
    """Run (or resume) training as described by `spec`; returns the last evaluation. `stop_hint`
    ends the line printed when a signal stops the run (callers that resume otherwise say how)."""
    recipe = Recipe.model_validate(spec.recipe)
    run_dir = Path(spec.output)
    # Join the process group first: a rank that fails after joining ends its peers' collectives
    # at once, while one that fails before would leave them waiting for it to join.
    accelerator = make_accelerator(spec, recipe, run_dir, hidden_size=variant_spec(recipe.variant).num_features)
    train_set, val_set = (open_split(spec.data, split, image_column=spec.image_column,
                                     label_column=spec.label_column, streaming=spec.streaming)
                          for split in (spec.train_split, spec.val_split))
    num_classes = recipe.num_classes or train_set.num_classes

    checkpointing.share_output_across_nodes(accelerator, run_dir)
    set_seed(recipe.seed)  # identical initial weights on every rank
    model = build_model(recipe, num_classes, spec, accelerator.print)
    world = accelerator.num_processes
    total_batch = recipe.batch_size * recipe.accum * world
    lr, warmup_lr, min_lr = recipe.scaled_lrs(total_batch)
    optimizer = build_optimizer(model, lr=lr, weight_decay=recipe.weight_decay,
                                offset_lr_scale=recipe.offset_lr_scale, betas=recipe.betas, eps=recipe.eps)

    train_set.set_transform(build_train_transform(
        recipe.res, auto_augment=recipe.auto_augment, color_jitter=recipe.color_jitter, re_prob=recipe.reprob,
        hflip=recipe.hflip, interpolation=recipe.interpolation, scale=recipe.train_scale,
        mean=recipe.mean, std=recipe.std))
    val_set.set_transform(eval_transform(recipe))
    per_step = recipe.batch_size * recipe.accum
    if spec.streaming:
        sampler = None
        per_rank = spec.train_size // world // per_step * per_step
        train_size = spec.train_size
    else:
        sampler = ResumableDistributedSampler(len(train_set), num_replicas=world, rank=accelerator.process_index,
                                              batch_size=per_step, seed=recipe.seed)
        per_rank = sampler.per_rank
        train_size = len(train_set)
    steps_per_epoch = per_rank // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {train_size} images, fewer than one step of "
                         f"{recipe.batch_size} x {recipe.accum} x {world}")
    total_steps = steps_per_epoch * recipe.epochs
    scheduler = build_scheduler(optimizer, total_steps=total_steps,
                                warmup_steps=round(recipe.warmup_epochs * steps_per_epoch),
                                warmup_lr=warmup_lr, min_lr=min_lr)
    if spec.deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3:
        gather_with_owner(model)
    if spec.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    input_dtype = compute_dtype(model)
    ema = FloatEma(accelerator.unwrap_model(model), recipe.ema_decay) if recipe.ema else None
    mixup, criterion = build_loss(recipe, num_classes)
    eval_criterion = nn.CrossEntropyLoss(reduction="sum")

    state = resume(accelerator, run_dir, spec.resume, ema) if spec.resume else TrainState()
    state.world_size = world
    scheduler.step_update(state.step)
    metrics = MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process)
    if spec.log_with:
        accelerator.init_trackers(run_dir.name, config=flat_config(recipe, world, total_batch))
    stop = StopRequest()
    stop.install()
    progress = TrainProgress(enabled=spec.progress and accelerator.is_main_process,
                             total_steps=min(total_steps, spec.max_steps or total_steps), start=state.step,
                             epochs=recipe.epochs, completed_epochs=state.epoch)
    items = None if spec.streaming else SeededItems(train_set, seed=recipe.seed)
    last_eval: dict[str, Any] = {}
    device = accelerator.device
    try:
        while state.epoch < recipe.epochs:
            loader = epoch_loader(train_set, items, sampler, recipe, spec, state, world, accelerator.process_index)
            model.train()
            skipped_images = 0
            window_start, window_images, window_loss, window_count = time.perf_counter(), 0, 0.0, 0
            for images, labels, num_skipped in loader:
                if state.position >= per_rank:  # a stream runs on past the epoch's end
                    break
                skipped_images += num_skipped
                state.position += recipe.batch_size
                if mixup is not None and images.shape[0] % 2:  # Mixup pairs samples; a corrupt image left one over
                    images, labels = images[:-1], labels[:-1]
                # Unreadable images can leave a batch too small to train on (batch norm needs two
                # samples); every rank then skips this batch together, so collectives stay in step.
                unusable = accelerator.reduce(torch.tensor([float(images.shape[0] < 2)], device=device), "sum")
                if unusable.item() > 0:
                    continue
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if mixup is not None:
                    images, targets = mixup(images, labels)
                else:
                    targets = labels
                images = as_model_input(images, input_dtype, spec.channels_last)
                with accelerator.accumulate(model):
                    with step_autocast(accelerator):
                        loss = criterion(model(images).float(), targets)
                    flags = accelerator.reduce(
                        torch.tensor([float(not torch.isfinite(loss)), float(stop.requested)], device=device), "sum")
                    if flags[0] > 0:
                        state.nonfinite_skipped += 1
                        optimizer.zero_grad(set_to_none=True)
                        if spec.deepspeed or state.nonfinite_skipped > spec.skip_nonfinite:
                            raise NonFiniteLoss(
                                f"non-finite loss at step {state.step} (epoch {state.epoch + 1}); "
                                f"the last good checkpoint is kept in {checkpointing.checkpoint_dir(run_dir)}")
                        log.warning("non-finite loss at step %d skipped (%d so far)", state.step, state.nonfinite_skipped)
                    else:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and recipe.clip_grad:
                            accelerator.clip_grad_norm_(model.parameters(), recipe.clip_grad)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        window_loss += loss.detach().float().item()
                        window_count += 1
                window_images += images.shape[0] * world
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                scheduler.step_update(state.step)
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model))
                current_lr = optimizer.param_groups[0]["lr"]
                if state.step % spec.log_every == 0 or state.step == 1:
                    elapsed = time.perf_counter() - window_start
                    record = dict(step=state.step, epoch=state.epoch, loss=window_loss / max(window_count, 1),
                                  lr=current_lr, images_per_s=window_images / max(elapsed, 1e-9))
                    metrics.write(**record)
                    if spec.log_with:
                        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
                    window_start, window_images, window_loss, window_count = time.perf_counter(), 0, 0.0, 0
                    progress.update(state, loss=record["loss"], lr=current_lr, images_per_s=record["images_per_s"])
                else:
                    progress.update(state, loss=loss.detach().float().item(), lr=current_lr)
                reached_max = reached_max_steps(spec, state)
                if flags[1] > 0 or (spec.save_every and state.step % spec.save_every == 0 and not reached_max):
                    save(accelerator, run_dir, state, spec.keep, ema)
                if flags[1] > 0:
                    metrics.write(event="stopped", step=state.step, epoch=state.epoch, reason="signal")
                    accelerator.print(f"stopped by signal at step {state.step}; {stop_hint}")
                    return last_eval
                if reached_max or state.position >= per_rank:
                    break
            skipped_total = int(accelerator.reduce(torch.tensor(skipped_images, device=device), "sum").item())
            epoch_done = state.position >= per_rank
            if epoch_done:
                state.epoch += 1
                state.position = 0
            if skipped_total:
                accelerator.print(f"epoch {state.epoch}: skipped {skipped_total} unreadable training images")
            if epoch_done and (state.epoch % recipe.eval_every_epochs == 0 or state.epoch == recipe.epochs) \
                    or reached_max_steps(spec, state):
                last_eval = run_eval(accelerator, model, ema, val_set, recipe, spec, eval_criterion, state,
                                     skipped_total, metrics)
                if on_eval is not None and on_eval(state.step, last_eval):
                    save(accelerator, run_dir, state, spec.keep, ema)
                    break
            save(accelerator, run_dir, state, spec.keep, ema)
            if reached_max_steps(spec, state):
                break
        write_final_weights(accelerator, model, ema, run_dir)
    finally:
        stop.uninstall()
        progress.close()
        if spec.log_with:
            accelerator.end_training()
    return last_eval


def epoch_loader(train_set, items, sampler, recipe: Recipe, spec: RunSpec, state: TrainState, world: int,
                 rank: int) -> Iterable:
    """This rank's batches for the rest of the current epoch, from `state.position` on."""
    # Its own generator: a loader otherwise draws its base seed from the global RNG, which a
    # resumed run would then consume at another point.
    generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + state.epoch)
    options = dict(batch_size=recipe.batch_size, num_workers=spec.workers, collate_fn=collate_skip_corrupt,
                   drop_last=True, pin_memory=torch.cuda.is_available(), generator=generator)
    if sampler is not None:
        sampler.set_epoch(state.epoch, start_at=state.position)
        items.set_epoch(state.epoch)
        return StopSafeLoader(items, sampler=sampler, **options)
    return _endless_stream(train_set, recipe, spec, state, world, rank, options)


def _endless_stream(train_set, recipe: Recipe, spec: RunSpec, state: TrainState, world: int, rank: int,
                    options: dict) -> Iterator:
    """A streamed epoch. Ranks may hold parts of unequal length (whole files per rank), so a part
    that ends early starts again, reshuffled: every rank then takes the same number of steps."""
    skip, lap = state.position, 0
    while True:
        part = train_set.for_rank(rank, world, seed=recipe.seed, epoch=state.epoch + lap * 1_000_000, skip=skip,
                                  batch_size=recipe.batch_size)
        delivered = False
        for batch in StopSafeLoader(part, **options):
            delivered = True
            yield batch
        if not delivered and skip == 0:
            raise ValueError(f"rank {rank} received no training images from the stream")
        skip, lap = 0, lap + 1


def reached_max_steps(spec: RunSpec, state: TrainState) -> bool:
    return spec.max_steps is not None and state.step >= spec.max_steps


def run_eval(accelerator, model, ema, val_set, recipe, spec, criterion, state, skipped_train, metrics) -> dict:
    result = evaluate(accelerator, model, val_set, batch_size=recipe.batch_size, workers=spec.workers,
                      criterion=criterion, channels_last=spec.channels_last)
    record = dict(step=state.step, epoch=state.epoch, top1=result["top1"], top5=result["top5"],
                  val_loss=result["loss"], val_images=result["count"], skipped_val=result["skipped"],
                  skipped_train=skipped_train)
    if ema is not None:
        ema_result = evaluate(accelerator, ema.module, val_set, batch_size=recipe.batch_size,
                              workers=spec.workers, criterion=criterion, channels_last=spec.channels_last)
        record["ema_top1"] = ema_result["top1"]
    metrics.write(**record)
    if spec.log_with:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
    accelerator.print(
        f"epoch {state.epoch} step {state.step}: val top-1 {result['top1']:.2f}% top-5 {result['top5']:.2f}% "
        f"({result['count']} images{', ' + str(result['skipped']) + ' unreadable skipped' if result['skipped'] else ''})")
    return record


class FloatEma:
    """An exponential moving average of the weights, held in float32 whatever the compute
    dtype: in bf16 a decay of 0.9998 moves a weight by less than its rounding step, so a bf16
    EMA never changes. Updated from the compute weights (under DeepSpeed the float32 master
    copy is sharded across ranks; gathering it every step would cost a collective)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.is_floating_point():
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - self.decay)
            else:
                ema_value.copy_(value)


def save(accelerator: Accelerator, run_dir: Path, state: TrainState, keep: int, ema) -> Path:
    extra = {}
    if ema is not None:
        extra["ema.safetensors"] = lambda path: save_file(_contiguous(ema.module.state_dict()), str(path))
    try:
        return checkpointing.save_checkpoint(accelerator, run_dir, state, keep, extra)
    except OSError as exc:
        checkpointing.remove_partial_checkpoints(run_dir)
        raise CheckpointWriteError(
            f"cannot write the checkpoint of step {state.step} in {checkpointing.checkpoint_dir(run_dir)} "
            f"({exc.strerror or exc}); the previous checkpoints are intact") from None


def resume(accelerator: Accelerator, run_dir: Path, resume_from: str, ema) -> TrainState:
    """Load the newest checkpoint every rank can read; a corrupt one is reported and skipped."""
    if checkpointing.writes_checkpoints(accelerator):
        checkpointing.remove_partial_checkpoints(run_dir)
    accelerator.wait_for_everyone()
    candidates = (checkpointing.list_checkpoints(run_dir) if resume_from == "auto" else [Path(resume_from)])
    for path in reversed(candidates):
        failed = 0.0
        try:
            for shards in sorted(path.glob("pytorch_model*")):  # DeepSpeed's loader unpickles without weights_only
                if shards.is_dir():
                    check_deepspeed_shards(path, shards.name)
            accelerator.load_state(str(path))
            state = checkpointing.read_state(path)
            if state.world_size != accelerator.num_processes:
                raise ResumeMismatch(
                    f"{path} was written by {state.world_size} processes, this run has {accelerator.num_processes}; "
                    "resume with the same number (DeepSpeed ZeRO shards need its universal-checkpoint conversion "
                    "to change it)")
            if ema is not None and (path / "ema.safetensors").is_file():
                from safetensors.torch import load_file

                ema.module.load_state_dict(load_file(str(path / "ema.safetensors")))
        except ResumeMismatch:
            raise
        except Exception as exc:  # a truncated or corrupt checkpoint: report, fall back to the previous one
            accelerator.print(f"checkpoint {path} is unreadable ({exc.__class__.__name__}: {exc}); trying an older one")
            failed = 1.0
        if accelerator.reduce(torch.tensor(failed, device=accelerator.device), "sum").item() == 0:
            accelerator.print(f"resumed from {path} (epoch {state.epoch}, step {state.step})")
            return state
    if resume_from != "auto" or candidates:
        raise ResumeMismatch(f"no readable checkpoint to resume from in {run_dir}")
    accelerator.print(f"no checkpoint in {run_dir}; starting from scratch")
    return TrainState()


def write_final_weights(accelerator: Accelerator, model: nn.Module, ema, run_dir: Path) -> None:
    """`model.safetensors` and the EMA weights, both float32 whatever the compute dtype."""
    state_dict = master_state_dict(accelerator, model)
    if accelerator.is_main_process:
        save_file(_contiguous(_strip_compile_prefix(state_dict)), str(run_dir / "model.safetensors"))
        if ema is not None:
            save_file(_contiguous(ema.module.state_dict()), str(run_dir / "model_ema.safetensors"))
    accelerator.wait_for_everyone()


def master_state_dict(accelerator: Accelerator, model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's float32 weights. Under DeepSpeed the module holds bf16/fp16 copies (or ZeRO-3
    placeholders), so each parameter comes from the optimizer's float32 master, gathered from
    its shards: a collective, which every rank must call in the same order."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return accelerator.get_state_dict(model)
    from deepspeed.utils import safe_get_full_fp32_param

    module = accelerator.unwrap_model(model)
    parameters = dict(module.named_parameters())
    state_dict = {}
    for name, value in module.state_dict(keep_vars=True).items():
        if name in parameters:
            value = safe_get_full_fp32_param(parameters[name])
        state_dict[name] = value.detach().float() if value.is_floating_point() else value.detach()
    return state_dict


def _strip_compile_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}


def flat_config(recipe: Recipe, world: int, total_batch: int) -> dict[str, Any]:
    """Tracker-friendly (scalar) view of the recipe."""
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in recipe.model_dump().items() if v is not None}
    flat.update(world_size=world, total_batch=total_batch)
    return flat

