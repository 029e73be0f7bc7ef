"""Zero-cost accuracy proxies: published training-free scores of a network at initialisation.

`naswot` (Mellor et al., ICML 2021; LITv2 has GELUs, so a unit's binary code is the sign of its
GELU input, the usual adaptation), `snip` (Lee et al., ICLR 2019) and `grad_norm` (both as proxies
in Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021), and `synflow` (Tanaka
et al., NeurIPS 2020; no data). The data-dependent scores use the same minibatches and
initialisation seed for every configuration, so that configurations differ only by architecture.
Scores of different kinds are not comparable in scale, so they are combined by rank
(`combine_by_rank`). What they are worth: on NAS-Bench-201 they reach a Spearman rho of about
0.6-0.75, no better than parameter or FLOP counts, and they transfer poorly to vision
transformers; LITv2-S's ImageNet top-1 spans only 0.22 points over alpha 0.2-1.0 in the paper,
which no cheap proxy resolves.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

PROXIES = ("naswot", "snip", "grad_norm", "synflow")
DEFAULT_PROXIES = ("naswot", "snip", "synflow")
ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Hardswish, nn.LeakyReLU)

Batch = tuple[torch.Tensor, torch.Tensor]  # (images (B, 3, H, W), labels (B,))


def parse_proxies(text: str) -> tuple[str, ...]:
    from litv2cli.errors import UserError

    names = tuple(dict.fromkeys(n.strip().lower().replace("-", "_") for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise UserError(f"--zero-cost {text}: unknown proxy {unknown[0]!r}; choose from {', '.join(PROXIES)}")
    if len(names) < 2:
        raise UserError(f"--zero-cost {text}: give at least two proxies, they are combined by rank")
    return names


def score_model(build_model: Callable[[], nn.Module], batches: Sequence[Batch], proxies: Sequence[str],
                *, seed: int = 0) -> dict[str, float]:
    """Every requested proxy for the model `build_model()` returns; each score from a fresh copy
    initialised with `seed`, so one proxy's backward pass cannot leak into another."""
    torch.manual_seed(seed)
    model = build_model()
    scores: dict[str, float] = {}
    if "naswot" in proxies:
        scores["naswot"] = _mean(naswot_score(copy.deepcopy(model), images) for images, _ in batches)
    if "snip" in proxies or "grad_norm" in proxies:
        gradient_scores = [snip_and_grad_norm(copy.deepcopy(model), images, labels) for images, labels in batches]
        if "snip" in proxies:
            scores["snip"] = _mean(s for s, _ in gradient_scores)
        if "grad_norm" in proxies:
            scores["grad_norm"] = _mean(g for _, g in gradient_scores)
    if "synflow" in proxies:
        images = batches[0][0]
        scores["synflow"] = synflow_score(copy.deepcopy(model), tuple(images.shape[1:]))
    for name, value in scores.items():
        if not math.isfinite(value):
            raise FloatingPointError(f"zero-cost proxy {name} is not finite ({value}) for this configuration")
    return scores


def naswot_score(model: nn.Module, images: torch.Tensor) -> float:
    """log|K| with K[i, j] = number of units on which samples i and j agree (both on or both off)."""
    activations = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not activations:
        raise ValueError("naswot needs activation modules (nn.GELU, nn.ReLU, ...) to read binary codes from")
    batch = images.shape[0]
    if batch < 2:
        raise ValueError("naswot needs minibatches of at least 2 images")
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes = (inputs[0].detach().reshape(batch, -1) > 0).to(torch.float32)  # (B, units)
        kernel.add_((codes @ codes.T + (1 - codes) @ (1 - codes).T).to(torch.float64))

    handles = [m.register_forward_pre_hook(record) for m in activations]
    try:
        model.train()
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else -math.inf


def snip_and_grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(snip, grad_norm) from one forward/backward of the cross-entropy loss."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    snip = grad_norm = 0.0
    for weight in _weights(model):
        if weight.grad is None:
            continue
        snip += float((weight.detach() * weight.grad).abs().sum())
        grad_norm += float(weight.grad.norm())
    return snip, grad_norm


def synflow_score(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Sum |theta * dR/dtheta| of the all-positive float64 network on an all-ones input."""
    model = model.double()
    model.eval()  # batch statistics of a single all-ones image are meaningless; use the init stats
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    model.zero_grad(set_to_none=True)
    model(torch.ones((1, *input_shape), dtype=torch.float64)).sum().backward()
    return float(sum((w.detach() * w.grad).abs().sum() for w in _weights(model) if w.grad is not None))


def combine_by_rank(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """{config: {proxy: score}} -> {config: mean rank over proxies scaled to [0, 1]} (1 = best).

    Ties share their mean rank. Only proxies present for every configuration are used."""
    configs = list(scores)
    if not configs:
        return {}
    if len(configs) == 1:
        return {configs[0]: 1.0}
    proxies = [p for p in scores[configs[0]] if all(p in scores[c] for c in configs)]
    if not proxies:
        return {}
    total = dict.fromkeys(configs, 0.0)
    for proxy in proxies:
        for config, rank in _average_ranks({c: scores[c][proxy] for c in configs}).items():
            total[config] += rank
    return {c: (total[c] / len(proxies) - 1) / (len(configs) - 1) for c in configs}


def _average_ranks(values: dict[str, float]) -> dict[str, float]:
    """1-based ranks, ascending (the largest value gets rank n); ties get their mean rank."""
    ordered = sorted(values, key=lambda k: values[k])
    ranks: dict[str, float] = {}
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and values[ordered[end + 1]] == values[ordered[start]]:
            end += 1
        for k in ordered[start:end + 1]:
            ranks[k] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight is not None and m.weight.requires_grad]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
