"""PLGDF losses: pyramid CE + Dice supervision, pyramid consistency with uncertainty rectification, sharpening.

Every loss takes the *logits* of the network's pyramid outputs ``[P1, P2, P3, P4]`` (each ``(B, C, H, W, D)``;
any number of spatial dimensions works), applies the softmax over the class channel itself and computes in
float32 (logits are cast with ``.float()``), so the losses are safe under ``torch.autocast``. No loss calls
``.item()`` or otherwise synchronises with the host.

Each loss also has ``from_probs(pyramid, ...)``, which takes a :class:`SoftmaxPyramid`: the log-softmax and
softmax of every output computed once. The trainer computes it once per iteration over all rows of the student
batch and hands each term its rows as views (:meth:`SoftmaxPyramid.rows`), so the four terms share one
log-softmax, one exponential and one float32 cast per output instead of recomputing them on their own rows.
``loss(logits)`` is ``loss.from_probs(SoftmaxPyramid.from_logits(logits))``.

Each loss has a ``reference`` form (or switch) that reproduces the authors' public code exactly; the defaults are
the paper's method (see ``docs/method_notes.md``, "What reference.json changes").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "soft_dice_loss",
    "one_hot",
    "SoftmaxPyramid",
    "PyramidSupervisedLoss",
    "PyramidConsistencyLoss",
    "SharpeningLoss",
]

DICE_FORMS = ("paper", "reference")
CONSISTENCY_FORMS = ("paper", "reference")
DICE_EPS = 1e-10  # the reference value, added to the Dice denominator only


def _as_pyramid(logits: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A single tensor is a one-level pyramid; checks that every level has the same ``(B, C, *spatial)`` shape."""
    levels = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if len(levels) == 0:
        raise ValueError("logits must hold at least one output, got an empty sequence.")
    shape = levels[0].shape
    if len(shape) < 3:
        raise ValueError(
            f"each output must be (B, C, *spatial) with at least one spatial dim, got shape {tuple(shape)}."
        )
    if shape[1] < 2:
        raise ValueError(f"the class channel must have at least 2 classes (softmax), got C={shape[1]}.")
    for k, level in enumerate(levels):
        if level.shape != shape:
            raise ValueError(
                f"all outputs must share one shape; output 0 is {tuple(shape)}, output {k} is " f"{tuple(level.shape)}."
            )
    return levels


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot encode integer labels ``(B, *spatial)`` into float32 ``(B, num_classes, *spatial)``.

    Built by comparison with ``arange(num_classes)``, so it never synchronises with the host (out-of-range labels
    give an all-zero vector instead of an error).
    """
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, *([1] * (labels.dim() - 1)))
    return (labels.unsqueeze(1) == classes).float()


def soft_dice_loss(
    probs: torch.Tensor, target_onehot: torch.Tensor, form: str = "paper", eps: float = DICE_EPS
) -> torch.Tensor:
    """Soft Dice loss on probabilities, pooled over the batch and voxels, averaged over classes (background included).

    For each class ``c``, with sums over the batch and all voxels:

    - ``form="paper"``:     ``L_c = 1 - 2 * sum(p_c g_c) / (sum(p_c^2) + sum(g_c^2) + eps)``
    - ``form="reference"``: ``L_c = 1 - sum(p_c g_c) / (sum(p_c^2) + sum(g_c^2) + eps)`` (the authors' code, no 2)

    and the loss is ``mean_c L_c``.

    Args:
        probs: probabilities ``(B, C, H, W, D)`` (e.g. a softmax over the class channel).
        target_onehot: one-hot (or soft) target of the same shape.
        form: ``"paper"`` or ``"reference"``. Defaults to ``"paper"``.
        eps: added to the denominator only. Defaults to ``1e-10`` (the reference value).

    Returns:
        a scalar tensor (float32).
    """
    if form not in DICE_FORMS:
        raise ValueError(f"form must be one of {DICE_FORMS}, got {form!r}.")
    if probs.shape != target_onehot.shape:
        raise ValueError(
            f"probs and target_onehot must have the same shape, got {tuple(probs.shape)} and "
            f"{tuple(target_onehot.shape)}."
        )
    if probs.dim() < 3:
        raise ValueError(f"probs must be (B, C, *spatial), got shape {tuple(probs.shape)}.")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    g = target_onehot.float()
    return _soft_dice(probs.float(), g, (g * g).sum(dim=_pooled_dims(g)), form, eps)


def _pooled_dims(x: torch.Tensor) -> list[int]:
    """The batch and voxel dims of ``(B, C, *spatial)``: everything but the class channel."""
    return [0] + list(range(2, x.dim()))


def _soft_dice(p: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor, form: str, eps: float) -> torch.Tensor:
    """:func:`soft_dice_loss` with ``sum(g_c^2)`` (``(C,)``) computed by the caller, once for every output."""
    dims = _pooled_dims(p)
    intersect = (p * g).sum(dim=dims)
    denominator = (p * p).sum(dim=dims) + g_sq + eps
    factor = 2.0 if form == "paper" else 1.0
    return (1.0 - factor * intersect / denominator).mean()


class SoftmaxPyramid:
    """The log-softmax and softmax over the class channel of every pyramid output, computed once.

    For outputs ``P_k`` ``(B, C, H, W, D)``: ``log_probs[k] = log_softmax(float(P_k))`` and
    ``probs[k] = exp(log_probs[k])``, both float32 and differentiable. :meth:`rows` gives the same rows of every
    level as views (no copy), so one pyramid over the whole student batch serves every loss term.

    Args:
        log_probs: one ``(B, C, *spatial)`` tensor per output.
        probs: ``exp`` of each of ``log_probs``, the same shapes.
    """

    def __init__(self, log_probs: Sequence[torch.Tensor], probs: Sequence[torch.Tensor]) -> None:
        self.log_probs, self.probs = list(log_probs), list(probs)
        _as_pyramid(self.log_probs)
        if [p.shape for p in self.probs] != [lp.shape for lp in self.log_probs]:
            raise ValueError("probs and log_probs must hold one tensor of the same shape per output.")

    @classmethod
    def from_logits(cls, logits: torch.Tensor | Sequence[torch.Tensor]) -> SoftmaxPyramid:
        """From the outputs' logits (one tensor is a one-level pyramid); each level is cast to float32 once."""
        log_probs = [F.log_softmax(level.float(), dim=1) for level in _as_pyramid(logits)]
        return cls(log_probs, [lp.exp() for lp in log_probs])

    def rows(self, start: int, stop: int | None = None) -> SoftmaxPyramid:
        """Batch rows ``[start, stop)`` of every level, as views."""
        return SoftmaxPyramid([lp[start:stop] for lp in self.log_probs], [p[start:stop] for p in self.probs])

    @property
    def shape(self) -> torch.Size:
        """``(B, C, *spatial)`` of every level."""
        return self.log_probs[0].shape

    def __len__(self) -> int:
        return len(self.log_probs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(log_probs[k], probs[k])`` per level."""
        return iter(zip(self.log_probs, self.probs))


class PyramidSupervisedLoss(nn.Module):
    """Cross-entropy + soft Dice summed over the pyramid outputs, against hard labels.

    ``L = weight * sum_k [ CE(P_k, y) + Dice(softmax(P_k), onehot(y)) ]``

    with ``CE`` the mean voxel-wise cross-entropy over the batch and ``Dice`` :func:`soft_dice_loss`. PLGDF uses it
    for ``L_sup`` (ground-truth labels of the labelled rows) and ``L_semi`` (hard pseudo-labels of the mixed rows).
    The one-hot target and its per-class voxel counts are built once per call, for all outputs.

    Args:
        dice_form: ``"paper"`` (``1 - 2 sum(pg) / ...``) or ``"reference"`` (no factor 2). Defaults to ``"paper"``.
        weight: the factor in front of the sum. Defaults to 0.5.
    """

    def __init__(self, dice_form: str = "paper", weight: float = 0.5) -> None:
        super().__init__()
        if dice_form not in DICE_FORMS:
            raise ValueError(f"dice_form must be one of {DICE_FORMS}, got {dice_form!r}.")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        self.dice_form = dice_form
        self.weight = float(weight)

    def forward(
        self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """
        Args:
            logits: the pyramid outputs ``[P1, ..., P4]``, each ``(B, C, H, W, D)`` (a single tensor is one level).
            target: class indices ``(B, H, W, D)`` or ``(B, 1, H, W, D)``; integer (a float tensor holding
                integer values is accepted and converted).

        Returns:
            ``(loss, parts)``: the weighted scalar loss and ``{"ce": sum_k CE_k, "dice": sum_k Dice_k}`` (detached,
            unweighted, for logging).
        """
        return self.from_probs(SoftmaxPyramid.from_logits(logits), target)

    def from_probs(self, pyramid: SoftmaxPyramid, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward` on precomputed probabilities (``pyramid``: :class:`SoftmaxPyramid` of the rows)."""
        shape = pyramid.shape
        if target.dim() == len(shape) and target.shape[1] == 1:
            target = target.squeeze(1)
        if target.shape != shape[:1] + shape[2:]:
            raise ValueError(
                f"target must be (B, *spatial) or (B, 1, *spatial) matching logits {tuple(shape)}, "
                f"got {tuple(target.shape)}."
            )
        if target.is_floating_point() or target.dtype != torch.long:
            target = target.long()
        target_onehot = one_hot(target, shape[1])
        g_sq = target_onehot.sum(dim=_pooled_dims(target_onehot))  # = sum(g^2) for a 0/1 target, exact
        ce = pyramid.log_probs[0].new_zeros(())
        dice = pyramid.log_probs[0].new_zeros(())
        for log_p, p in pyramid:
            ce = ce + F.nll_loss(log_p, target)  # = cross_entropy(P_k, y): log_p is its log-softmax
            dice = dice + _soft_dice(p, target_onehot, g_sq, self.dice_form, DICE_EPS)
        return self.weight * (ce + dice), {"ce": ce.detach(), "dice": dice.detach()}


class PyramidConsistencyLoss(nn.Module):
    """Pyramid consistency with uncertainty rectification (PLGDF's ``L_consis``; after URPC).

    With ``p_k = softmax(P_k)`` and ``p_mean = mean_k p_k``, per voxel ``i`` the uncertainty of output ``k`` is the
    KL divergence ``D_k,i = sum_c p_mean,c,i (log p_mean,c,i - log p_k,c,i)`` (computed with ``xlogy`` and
    ``log_softmax``, so no log of 0 is ever taken). Then

    - ``form="paper"``:
      ``L = mean_k [ sum_i ||p_k,i - p_mean,i||^2 exp(-D_k,i) / (sum_i exp(-D_k,i)) + mean_i D_k,i ]``,
      where ``||.||^2`` is the squared Euclidean norm over the class channel;
    - ``form="reference"`` (the authors' code):
      ``L = mean_k [ mean_{i,c} (p_mean,c,i - p_k,c,i)^3 exp(-D_k,i) / mean_i exp(-D_k,i) + mean_i D_k,i ]``,
      a cubed (signed) difference averaged over the classes as well; for two classes the cubed terms of the two
      channels cancel exactly and only ``mean_k mean_i D_k,i`` remains.

    The index ``i`` runs over **all voxels of all rows of the batch together** (one weighted average over the whole
    batch, not one per sample and then averaged), as in the authors' code and as the Dice loss pools the batch.
    In both forms the ratio is computed as ``mean_i(...) / (mean_i exp(-D) + eps)``.

    Args:
        form: ``"paper"`` or ``"reference"``. Defaults to ``"paper"``.
        eps: added to the (voxel-mean) denominator ``mean_i exp(-D_k,i)``. Defaults to ``1e-8`` (the reference value).
        detach_mean: detach ``p_mean`` (the target of the consistency), so that gradients reach each output only
            through its own ``p_k``. ``False`` reproduces the reference (nothing detached). Defaults to ``True``.
    """

    def __init__(self, form: str = "paper", eps: float = 1e-8, detach_mean: bool = True) -> None:
        super().__init__()
        if form not in CONSISTENCY_FORMS:
            raise ValueError(f"form must be one of {CONSISTENCY_FORMS}, got {form!r}.")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
        self.form = form
        self.eps = float(eps)
        self.detach_mean = bool(detach_mean)

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            logits: the pyramid outputs ``[P1, ..., P4]``, each ``(B, C, H, W, D)``.

        Returns:
            a scalar tensor (float32).
        """
        return self.from_probs(SoftmaxPyramid.from_logits(logits))

    def from_probs(self, pyramid: SoftmaxPyramid) -> torch.Tensor:
        """:meth:`forward` on precomputed probabilities (``pyramid``: :class:`SoftmaxPyramid` of the rows)."""
        probs = pyramid.probs
        p_mean = probs[0]
        for p_k in probs[1:]:
            p_mean = p_mean + p_k
        p_mean = p_mean / len(probs)
        if self.detach_mean:
            p_mean = p_mean.detach()
        # sum_c p_mean log p_mean (0 where p_mean == 0), shared by every D_k = that - sum_c p_mean log p_k
        neg_entropy = torch.xlogy(p_mean, p_mean).sum(dim=1, keepdim=True)
        total = p_mean.new_zeros(())
        for log_p_k, p_k in pyramid:
            kl = neg_entropy - (p_mean * log_p_k).sum(dim=1, keepdim=True)  # (B, 1, *spatial)
            w = torch.exp(-kl)
            if self.form == "paper":
                dist = (p_k - p_mean).pow(2).sum(dim=1, keepdim=True)  # (B, 1, *spatial)
            else:
                dist = (p_mean - p_k).pow(3)  # (B, C, *spatial); the mean below also runs over the classes
            total = total + (dist * w).mean() / (w.mean() + self.eps) + kl.mean()
        return total / len(pyramid)


class SharpeningLoss(nn.Module):
    """Sharpening loss: mean squared distance between each output's softmax and its sharpened version.

    Per class channel, ``s(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T))``, and

    ``L = mean_k mean_{b,c,i} (p_k - s(p_k))^2`` with ``p_k = softmax(P_k)``.

    ``s`` is evaluated in log space, ``s(p_c) = sigmoid((log p_c - log(1 - p_c)) / T)`` with
    ``log p_c - log(1 - p_c) = z_c - logsumexp_{c' != c} z_c'`` from the logits ``z`` (or the log-probabilities,
    which differ from them by a shift per voxel that cancels), which is exact and finite for any finite logits
    even at ``T = 0.1`` (no ``0 / 0``, no infinite gradients).

    Args:
        temperature: ``T`` > 0. Defaults to 0.1.
        detach_target: detach ``s(p_k)`` (the sharpened target). ``False`` reproduces the reference code, where the
            gradient also flows through the sharpened target. Defaults to ``True``.
    """

    def __init__(self, temperature: float = 0.1, detach_target: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.detach_target = bool(detach_target)

    def sharpen(self, logits: torch.Tensor) -> torch.Tensor:
        """``s(softmax(logits))`` per class channel; ``logits`` (or log-probabilities) ``(B, C, H, W, D)``, float32
        output of that shape."""
        z = logits.float()
        n_classes = z.shape[1]
        if n_classes == 2:  # the logsumexp over the one other class is that class's value
            lse_others = z.flip(1)
        else:  # logsumexp over the other classes: z broadcast to (B, C, C, ...) with the diagonal masked out
            mask = torch.zeros(n_classes, n_classes, device=z.device, dtype=z.dtype)
            mask.fill_diagonal_(float("-inf"))
            mask = mask.view(1, n_classes, n_classes, *([1] * (z.dim() - 2)))
            lse_others = torch.logsumexp(z.unsqueeze(1) + mask, dim=2)
        return torch.sigmoid((z - lse_others) / self.temperature)

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            logits: the pyramid outputs ``[P1, ..., P4]``, each ``(B, C, H, W, D)``.

        Returns:
            a scalar tensor (float32).
        """
        return self.from_probs(SoftmaxPyramid.from_logits(logits))

    def from_probs(self, pyramid: SoftmaxPyramid) -> torch.Tensor:
        """:meth:`forward` on precomputed probabilities (``pyramid``: :class:`SoftmaxPyramid` of the rows)."""
        total = pyramid.log_probs[0].new_zeros(())
        for log_p, p in pyramid:
            target = self.sharpen(log_p)
            if self.detach_target:
                target = target.detach()
            total = total + (p - target).pow(2).mean()
        return total / len(pyramid)
