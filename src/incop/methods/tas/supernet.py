"""The supernet (TAS.md A3, A8): the model searched in place, its channels masked by each
group's sampled soft prefix mask and its stages mixed over their depths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from incop.methods.tas.sampling import (
    expected_width,
    gumbel_noise,
    gumbel_pair,
    keep_probabilities,
    prefix_mask,
)
from incop.methods.tas.space import Space, architecture_macs, expected_macs


class Supernet:
    """``model`` (searched in place) with the architecture parameters of ``space``: alpha per
    group, beta per stage (N(0, 0.01^2), drawn from ``generator``). :meth:`sample` draws the
    architecture of the next forward pass; :meth:`hard` fixes the argmax one."""

    def __init__(self, model: nn.Module, space: Space, generator: torch.Generator) -> None:
        self.model, self.space, self.generator = model, space, generator
        device = next(model.parameters()).device
        draw = lambda n: (torch.randn(n, generator=generator) * 0.01).to(device).requires_grad_()  # noqa: E731
        self.alphas = [draw(len(g.choices)) for g in space.groups]
        self.betas = [draw(len(s.choices)) for s in space.stages]
        self._choices = [torch.tensor(g.choices, device=device) for g in space.groups]
        self._masks: list[torch.Tensor] = []
        self._mix: list[torch.Tensor] = []
        self._hooks: list[Any] = []
        modules = dict(model.named_modules())
        for g, group in enumerate(space.groups):
            for site in group.sites:
                last = isinstance(modules[site], nn.Linear)
                self._hooks.append(modules[site].register_forward_hook(self._masker(g, last)))
        for s, stage in enumerate(space.stages):
            outputs: list[torch.Tensor] = []
            for i, block in enumerate(stage.blocks, start=1):
                hook = self._mixer(s, i, len(stage.blocks), outputs)
                self._hooks.append(modules[block].register_forward_hook(hook))

    def _masker(self, g: int, last: bool) -> Callable:
        def hook(_module, _args, output):
            mask = self._masks[g].to(output.dtype)
            shape = [1] * output.dim()
            shape[-1 if last else 1] = -1
            return output * mask.view(shape)

        return hook

    def _mixer(self, s: int, i: int, blocks: int, outputs: list[torch.Tensor]) -> Callable:
        depths = self.space.stages[s].choices

        def hook(_module, _args, output):
            if i == 1:
                outputs.clear()
            if i in depths:
                outputs.append(output)
            if i < blocks:
                return output
            mixed = sum(q * x for q, x in zip(self._mix[s], outputs, strict=True))
            outputs.clear()
            return mixed

        return hook

    def sample(self, tau: float) -> None:
        """Draw every group's pair and every stage's depth mixture for the next forward."""
        self._masks = []
        for alpha, choices, group in zip(
            self.alphas, self._choices, self.space.groups, strict=True
        ):
            pair, w, _ = gumbel_pair(alpha, tau, generator=self.generator)
            self._masks.append(prefix_mask(choices[pair], w, group.size))
        self._mix = []
        for beta in self.betas:
            if tau <= 0:
                self._mix.append(F.softmax(beta, dim=0))
            else:
                noise = gumbel_noise(beta, self.generator)
                self._mix.append(F.softmax((F.log_softmax(beta, dim=0) + noise) / tau, dim=0))

    def hard(
        self, widths: dict[str, int] | None = None, depths: dict[str, int] | None = None
    ) -> None:
        """Fix the architecture (default: the argmax one): masks 1[c < C*], one-hot depths."""
        widths = widths or self.widths()
        depths = depths or self.depths()
        device = next(self.model.parameters()).device
        self._masks = [(torch.arange(g.size, device=device) < widths[g.name]).float()
                       for g in self.space.groups]  # fmt: skip
        self._mix = [(torch.tensor(s.choices, device=device) == depths[s.name]).float()
                     for s in self.space.stages]  # fmt: skip

    def widths(self) -> dict[str, int]:
        return {
            g.name: g.choices[int(a.argmax())]
            for g, a in zip(self.space.groups, self.alphas, strict=True)
        }

    def depths(self) -> dict[str, int]:
        return {
            s.name: s.choices[int(b.argmax())]
            for s, b in zip(self.space.stages, self.betas, strict=True)
        }

    def expected(self) -> torch.Tensor:
        """``E_F`` from the noise-free softmaxes (differentiable in alpha and beta)."""
        widths = [expected_width(a, c) for a, c in zip(self.alphas, self._choices, strict=True)]
        keep = [keep_probabilities(b, s.choices, len(s.blocks))
                for b, s in zip(self.betas, self.space.stages, strict=True)]  # fmt: skip
        return expected_macs(self.space, widths, keep)

    def argmax_macs(self) -> int:
        """``F(A)``: the MACs of the argmax architecture."""
        return architecture_macs(self.space, self.widths(), self.depths())

    def discrepancy(self) -> list[float]:
        """Per distribution, its largest probability minus its second (1 for one candidate)."""
        found = []
        for logits in [*self.alphas, *self.betas]:
            p = F.softmax(logits.detach(), dim=0).sort(descending=True).values
            found.append(float(p[0] - p[1]) if p.numel() > 1 else 1.0)
        return found

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def parameters(self) -> list[torch.Tensor]:
        return [*self.alphas, *self.betas]
