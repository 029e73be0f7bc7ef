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
from dataclasses import dataclass
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
from litv2cli.defaults import epoch_seed
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
        config = dsconfig.read_config(Path(spec.deepspeed))
        dsconfig.check_recipe(recipe, config)  # the CLI checks it before launching; library callers meet it here
        config = dsconfig.fill_config(
            config, micro_batch=recipe.batch_size, accum=recipe.accum,
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
    return Trainer(spec).train(on_eval=on_eval, stop_hint=stop_hint)


@dataclass
class StepResult:
    """What one micro-batch leaves for the loop: its loss, whether the loss was finite on every
    rank, whether any rank was asked to stop, and how many images it trained on across ranks."""

    loss: torch.Tensor
    finite: bool
    stop: bool
    images: int


class LogWindow:
    """The micro-batches since the last metrics line: the mean of their finite losses and the
    throughput over them, so each logged line describes its own stretch of training."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.images, self.loss, self.count = time.perf_counter(), 0, 0.0, 0

    def record(self, result: StepResult) -> None:
        if result.finite:
            self.loss += result.loss.detach().float().item()
            self.count += 1
        self.images += result.images

    def summary(self) -> tuple[float, float]:
        """(mean loss, images per second) of the window."""
        elapsed = time.perf_counter() - self.start
        return self.loss / max(self.count, 1), self.images / max(elapsed, 1e-9)


class Trainer:
    """Everything one training run holds: what the set-up builds (accelerator, data, model,
    optimizer, schedule, loss, checkpoint state) and the loop over it.

    Every rank runs the same sequence of collectives (the reduces of each step and epoch, the
    barriers of evaluation and saving) in the same order; the methods below keep that order, as
    a rank that skips or repeats one leaves its peers waiting.
    """

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.recipe = recipe = Recipe.model_validate(spec.recipe)
        self.run_dir = Path(spec.output)
        # Join the process group first: a rank that fails after joining ends its peers' collectives
        # at once, while one that fails before would leave them waiting for it to join.
        self.accelerator = make_accelerator(spec, recipe, self.run_dir,
                                            hidden_size=variant_spec(recipe.variant).num_features)
        self.train_set, self.val_set = (open_split(spec.data, split, image_column=spec.image_column,
                                                   label_column=spec.label_column, streaming=spec.streaming)
                                        for split in (spec.train_split, spec.val_split))
        self.num_classes = recipe.num_classes or self.train_set.num_classes

        checkpointing.share_output_across_nodes(self.accelerator, self.run_dir)
        set_seed(recipe.seed)  # identical initial weights on every rank
        self.model = build_model(recipe, self.num_classes, spec, self.accelerator.print)
        self.world = self.accelerator.num_processes
        self.total_batch = recipe.batch_size * recipe.accum * self.world
        lr, warmup_lr, min_lr = recipe.scaled_lrs(self.total_batch)
        self.optimizer = build_optimizer(self.model, lr=lr, weight_decay=recipe.weight_decay,
                                         offset_lr_scale=recipe.offset_lr_scale, betas=recipe.betas, eps=recipe.eps)
        self._set_transforms()
        steps_per_epoch = self._plan_epochs()
        self.total_steps = steps_per_epoch * recipe.epochs
        self.scheduler = build_scheduler(self.optimizer, total_steps=self.total_steps,
                                         warmup_steps=round(recipe.warmup_epochs * steps_per_epoch),
                                         warmup_lr=warmup_lr, min_lr=min_lr)
        self._prepare()
        self._start_state()

    def _set_transforms(self) -> None:
        recipe = self.recipe
        self.train_set.set_transform(build_train_transform(
            recipe.res, auto_augment=recipe.auto_augment, color_jitter=recipe.color_jitter, re_prob=recipe.reprob,
            hflip=recipe.hflip, interpolation=recipe.interpolation, scale=recipe.train_scale,
            mean=recipe.mean, std=recipe.std))
        self.val_set.set_transform(eval_transform(recipe))

    def _plan_epochs(self) -> int:
        """Sets the sampler (none for a stream) and this rank's samples per epoch; returns the
        optimizer steps per epoch."""
        recipe, spec, world = self.recipe, self.spec, self.world
        per_step = recipe.batch_size * recipe.accum
        if spec.streaming:
            self.sampler = None
            self.per_rank = spec.train_size // world // per_step * per_step
            train_size = spec.train_size
        else:
            self.sampler = ResumableDistributedSampler(len(self.train_set), num_replicas=world,
                                                       rank=self.accelerator.process_index,
                                                       batch_size=per_step, seed=recipe.seed)
            self.per_rank = self.sampler.per_rank
            train_size = len(self.train_set)
        steps_per_epoch = self.per_rank // per_step
        if steps_per_epoch == 0:
            raise ValueError(f"the training split has {train_size} images, fewer than one step of "
                             f"{recipe.batch_size} x {recipe.accum} x {world}")
        return steps_per_epoch

    def _prepare(self) -> None:
        """Hands the model and optimizer to accelerate, then builds what depends on the prepared model."""
        if self.spec.deepspeed and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            gather_with_owner(self.model)
        if self.spec.compile:
            self.model = torch.compile(self.model)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.input_dtype = compute_dtype(self.model)
        recipe = self.recipe
        self.ema = FloatEma(self.accelerator.unwrap_model(self.model), recipe.ema_decay) if recipe.ema else None
        self.mixup, self.criterion = build_loss(recipe, self.num_classes)
        self.eval_criterion = nn.CrossEntropyLoss(reduction="sum")

    def _start_state(self) -> None:
        """Resumes (or starts) the training state, then opens the logs, the signal handler and the progress bar."""
        spec, recipe, accelerator = self.spec, self.recipe, self.accelerator
        self.state = resume(accelerator, self.run_dir, spec.resume, self.ema) if spec.resume else TrainState()
        self.state.world_size = self.world
        self.scheduler.step_update(self.state.step)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", accelerator.is_main_process)
        if spec.log_with:
            accelerator.init_trackers(self.run_dir.name, config=flat_config(recipe, self.world, self.total_batch))
        self.stop = StopRequest()
        self.stop.install()
        self.progress = TrainProgress(enabled=spec.progress and accelerator.is_main_process,
                                      total_steps=min(self.total_steps, spec.max_steps or self.total_steps),
                                      start=self.state.step, epochs=recipe.epochs, completed_epochs=self.state.epoch)
        self.items = None if spec.streaming else SeededItems(self.train_set, seed=recipe.seed)
        self.last_eval: dict[str, Any] = {}
        self.device = accelerator.device
        self.window = LogWindow()

    def train(self, *, on_eval: EvalCallback | None = None,
              stop_hint: str = "resume with --resume auto") -> dict[str, Any]:
        """The epoch loop: train, evaluate when due, save at every epoch's end, and write the final
        weights; returns the last evaluation. `on_eval` may end training early by returning True."""
        try:
            while self.state.epoch < self.recipe.epochs:
                loader = self.epoch_loader()
                skipped = self.train_epoch(loader, stop_hint)
                if skipped is None:  # a signal stopped the run, after saving
                    return self.last_eval
                epoch_done, skipped_total = self.close_epoch(skipped)
                if self.eval_due(epoch_done):
                    self.last_eval = self.run_eval(skipped_total)
                    if on_eval is not None and on_eval(self.state.step, self.last_eval):
                        self.save()
                        break
                self.save()
                if reached_max_steps(self.spec, self.state):
                    break
            write_final_weights(self.accelerator, self.model, self.ema, self.run_dir)
        finally:
            self.stop.uninstall()
            self.progress.close()
            if self.spec.log_with:
                self.accelerator.end_training()
        return self.last_eval

    def train_epoch(self, loader: Iterable, stop_hint: str) -> int | None:
        """The rest of the current epoch from `loader`, or up to `max_steps`. Returns the unreadable
        images this rank skipped, or None when a signal stopped the run (after saving)."""
        self.model.train()
        skipped_images = 0
        self.window.reset()
        for images, labels, num_skipped in loader:
            if self.state.position >= self.per_rank:  # a stream runs on past the epoch's end
                break
            skipped_images += num_skipped
            self.state.position += self.recipe.batch_size
            batch = self.usable_batch(images, labels)
            if batch is None:
                continue
            result = self.train_step(*batch)
            self.window.record(result)
            if not self.accelerator.sync_gradients:
                continue
            reached_max = self.finish_step(result)
            if result.stop:
                self.metrics.write(event="stopped", step=self.state.step, epoch=self.state.epoch, reason="signal")
                self.accelerator.print(f"stopped by signal at step {self.state.step}; {stop_hint}")
                return None
            if reached_max or self.state.position >= self.per_rank:
                break
        return skipped_images

    def usable_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch to train on, or None when any rank's batch is too small to train on."""
        if self.mixup is not None and images.shape[0] % 2:  # Mixup pairs samples; a corrupt image left one over
            images, labels = images[:-1], labels[:-1]
        # Unreadable images can leave a batch too small to train on (batch norm needs two
        # samples); every rank then skips this batch together, so collectives stay in step.
        unusable = self.accelerator.reduce(torch.tensor([float(images.shape[0] < 2)], device=self.device), "sum")
        if unusable.item() > 0:
            return None
        return images, labels

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """One micro-batch: forward, then (unless the loss is non-finite on some rank) backward,
        clipping and the optimizer step, which accelerate defers to the last of `accum`."""
        accelerator, model = self.accelerator, self.model
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        else:
            targets = labels
        images = as_model_input(images, self.input_dtype, self.spec.channels_last)
        with accelerator.accumulate(model):
            with step_autocast(accelerator):
                loss = self.criterion(model(images).float(), targets)
            flags = accelerator.reduce(
                torch.tensor([float(not torch.isfinite(loss)), float(self.stop.requested)], device=self.device),
                "sum")
            nonfinite, stop = (count > 0 for count in flags.tolist())
            if nonfinite:
                self.skip_nonfinite()
            else:
                accelerator.backward(loss)
                if accelerator.sync_gradients and self.recipe.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), self.recipe.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss, finite=not nonfinite, stop=stop, images=images.shape[0] * self.world)

    def skip_nonfinite(self) -> None:
        """Drops a micro-batch whose loss is not finite on some rank; raises NonFiniteLoss once
        more have been dropped than `skip_nonfinite` allows (at once under DeepSpeed)."""
        state = self.state
        state.nonfinite_skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.spec.deepspeed or state.nonfinite_skipped > self.spec.skip_nonfinite:
            raise NonFiniteLoss(
                f"non-finite loss at step {state.step} (epoch {state.epoch + 1}); "
                f"the last good checkpoint is kept in {checkpointing.checkpoint_dir(self.run_dir)}")
        log.warning("non-finite loss at step %d skipped (%d so far)", state.step, state.nonfinite_skipped)

    def finish_step(self, result: StepResult) -> bool:
        """After an optimizer step: count it, advance the schedule and the EMA, log, and save on a
        signal or every `save_every` steps. Returns whether `max_steps` is reached."""
        state, spec = self.state, self.spec
        state.step += 1
        self.scheduler.step_update(state.step)
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model))
        self.log_step(result.loss)
        reached_max = reached_max_steps(spec, state)
        if result.stop or (spec.save_every and state.step % spec.save_every == 0 and not reached_max):
            self.save()
        return reached_max

    def log_step(self, loss: torch.Tensor) -> None:
        """A metrics line (and tracker entry) for the window on the first step and every
        `log_every` steps; otherwise only the progress bar, with this step's loss."""
        state = self.state
        current_lr = self.optimizer.param_groups[0]["lr"]
        if state.step % self.spec.log_every == 0 or state.step == 1:
            mean_loss, images_per_s = self.window.summary()
            record = dict(step=state.step, epoch=state.epoch, loss=mean_loss, lr=current_lr,
                          images_per_s=images_per_s)
            self.metrics.write(**record)
            if self.spec.log_with:
                self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
            self.window.reset()
            self.progress.update(state, loss=record["loss"], lr=current_lr, images_per_s=record["images_per_s"])
        else:
            self.progress.update(state, loss=loss.detach().float().item(), lr=current_lr)

    def close_epoch(self, skipped_images: int) -> tuple[bool, int]:
        """Adds up the unreadable images of every rank (a collective) and, when the epoch is
        complete, moves the state to the next one. Returns (epoch complete, images skipped)."""
        state = self.state
        skipped_total = int(self.accelerator.reduce(torch.tensor(skipped_images, device=self.device), "sum").item())
        epoch_done = state.position >= self.per_rank
        if epoch_done:
            state.epoch += 1
            state.position = 0
        if skipped_total:
            self.accelerator.print(f"epoch {state.epoch}: skipped {skipped_total} unreadable training images")
        return epoch_done, skipped_total

    def eval_due(self, epoch_done: bool) -> bool:
        """Evaluate after every `eval_every_epochs` epochs, after the last, and when `max_steps` is reached."""
        epoch = self.state.epoch
        return epoch_done and (epoch % self.recipe.eval_every_epochs == 0 or epoch == self.recipe.epochs) \
            or reached_max_steps(self.spec, self.state)

    def epoch_loader(self) -> Iterable:
        """This rank's batches for the rest of the current epoch, from `state.position` on."""
        recipe, state = self.recipe, self.state
        # Its own generator: a loader otherwise draws its base seed from the global RNG, which a
        # resumed run would then consume at another point.
        generator = torch.Generator().manual_seed(epoch_seed(recipe.seed, state.epoch))
        options = dict(batch_size=recipe.batch_size, num_workers=self.spec.workers, collate_fn=collate_skip_corrupt,
                       drop_last=True, pin_memory=torch.cuda.is_available(), generator=generator)
        if self.sampler is not None:
            self.sampler.set_epoch(state.epoch, start_at=state.position)
            self.items.set_epoch(state.epoch)
            return StopSafeLoader(self.items, sampler=self.sampler, **options)
        return self._endless_stream(self.accelerator.process_index, options)

    def _endless_stream(self, rank: int, options: dict) -> Iterator:
        """A streamed epoch. Ranks may hold parts of unequal length (whole files per rank), so a part
        that ends early starts again, reshuffled: every rank then takes the same number of steps."""
        recipe, state = self.recipe, self.state
        skip, lap = state.position, 0
        while True:
            part = self.train_set.for_rank(rank, self.world, seed=recipe.seed, epoch=state.epoch + lap * 1_000_000,
                                           skip=skip, batch_size=recipe.batch_size)
            delivered = False
            for batch in StopSafeLoader(part, **options):
                delivered = True
                yield batch
            if not delivered and skip == 0:
                raise ValueError(f"rank {rank} received no training images from the stream")
            skip, lap = 0, lap + 1

    def run_eval(self, skipped_train: int) -> dict:
        """Evaluates the model (and the EMA) on the validation split, then logs and prints the result."""
        accelerator, recipe, spec, state = self.accelerator, self.recipe, self.spec, self.state
        result = evaluate(accelerator, self.model, self.val_set, batch_size=recipe.batch_size, workers=spec.workers,
                          criterion=self.eval_criterion, channels_last=spec.channels_last)
        record = dict(step=state.step, epoch=state.epoch, top1=result["top1"], top5=result["top5"],
                      val_loss=result["loss"], val_images=result["count"], skipped_val=result["skipped"],
                      skipped_train=skipped_train)
        if self.ema is not None:
            ema_result = evaluate(accelerator, self.ema.module, self.val_set, batch_size=recipe.batch_size,
                                  workers=spec.workers, criterion=self.eval_criterion, channels_last=spec.channels_last)
            record["ema_top1"] = ema_result["top1"]
        self.metrics.write(**record)
        if spec.log_with:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
        unreadable = f", {result['skipped']} unreadable skipped" if result["skipped"] else ""
        accelerator.print(
            f"epoch {state.epoch} step {state.step}: val top-1 {result['top1']:.2f}% top-5 {result['top5']:.2f}% "
            f"({result['count']} images{unreadable})")
        return record

    def save(self) -> Path:
        """A checkpoint of the training state (and the EMA); every rank must call this."""
        extra = {}
        if self.ema is not None:
            ema = self.ema
            extra["ema.safetensors"] = lambda path: save_file(_contiguous(ema.module.state_dict()), str(path))
        try:
            return checkpointing.save_checkpoint(self.accelerator, self.run_dir, self.state, self.spec.keep, extra)
        except OSError as exc:
            checkpointing.remove_partial_checkpoints(self.run_dir)
            raise CheckpointWriteError(
                f"cannot write the checkpoint of step {self.state.step} in "
                f"{checkpointing.checkpoint_dir(self.run_dir)} ({exc.strerror or exc}); "
                "the previous checkpoints are intact") from None


def reached_max_steps(spec: RunSpec, state: TrainState) -> bool:
    return spec.max_steps is not None and state.step >= spec.max_steps


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

