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

For two classes (``C == 2``, the LA and Pancreas-CT tasks) the pyramid keeps one channel per output instead: the logit
difference ``d = z_1 - z_0``, since ``softmax(z) = (sigmoid(-d), sigmoid(d))`` and ``log_softmax(z) =
(-softplus(d), -softplus(-d))``. Every term then has a one-channel closed form (two complementary channels have
equal squared distances and sharpening residuals, and their KL divergence and CE need ``d`` and one log-probability)
computed by a ``torch.autograd.Function`` with a hand-written backward: the same values and gradients as the general
form within float32 rounding (tested), forward + backward about 2.8 times faster on one CPU thread
(``benchmarks/loss_terms.py``; docs/performance.md).

Each loss has a ``reference`` form (or switch) that reproduces the authors' public code exactly; the defaults are
the paper's method (see ``docs/method_notes.md``, "What reference.json changes").
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

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


# --------------------------------------------------------------------------------------------- two-class closed forms
# With two classes, d = z_1 - z_0 per voxel, p_1 = sigmoid(d), p_0 = sigmoid(-d) and d p_1 / d d = p_1 p_0. Each term
# below is a torch.autograd.Function of the logit differences: its forward computes the value from the pyramid's
# one-channel parts (sums of products; no one-hot, no second channel) and its backward writes dL/dd in a few
# elementwise passes, where autograd would keep and replay every intermediate of both channels.


def _no_autocast(x: torch.Tensor) -> torch.autocast:
    """Autocast off on ``x``'s device: the closed forms compute in float32 inside an autocast region too."""
    return torch.autocast(x.device.type, enabled=False)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(a * b)`` over all elements, with torch's cascade sum (``torch.dot``, one pass fewer, was up to 5e-6
    off in relative terms at a patch's voxel count; this stays within 1e-7 as the general form)."""
    return (a * b).sum()


def _mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of same-shape tensors (accumulated in place)."""
    total = tensors[0].clone()
    for x in tensors[1:]:
        total.add_(x)
    return total.div_(len(tensors))


class _TwoClassParts:
    """``log p_0``, ``log p_1``, ``p_0``, ``p_1`` per level, each ``(B, 1, *spatial)``, without gradient."""

    def __init__(self, log_p0: list, log_p1: list, p0: list, p1: list) -> None:
        self.log_p0, self.log_p1, self.p0, self.p1 = log_p0, log_p1, p0, p1

    def rows(self, start: int, stop: int | None) -> _TwoClassParts:
        return _TwoClassParts(*[[x[start:stop] for x in xs] for xs in (self.log_p0, self.log_p1, self.p0, self.p1)])

    def level(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.log_p0[k], self.log_p1[k], self.p0[k], self.p1[k]


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is laid out in (its gradient is given the same one)."""
    if not x.is_contiguous():
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


class _LogitDifference(torch.autograd.Function):
    """``d = float(z_1) - float(z_0)`` ``(B, 1, *spatial)`` from two-class logits ``z`` ``(B, 2, *spatial)``; the
    gradient ``(-g, g)`` is written once, in ``z``'s dtype and memory format."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: torch.Tensor) -> torch.Tensor:
        ctx.dtype, ctx.memory_format = logits.dtype, _memory_format(logits)
        z = logits.float()
        return (z[:, 1:2] - z[:, 0:1]).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.to(ctx.dtype)
        shape = (g.shape[0], 2, *g.shape[2:])
        out = torch.empty(shape, dtype=ctx.dtype, device=g.device, memory_format=ctx.memory_format)
        out[:, 1:2] = g
        out[:, 0:1] = -g
        return out


class _TwoClassSupervised(torch.autograd.Function):
    """One two-class output's ``(CE, Dice)`` against the 0/1 masks ``g_0``, ``g_1`` of the labels.

    ``CE = -(sum g_1 log p_1 + sum g_0 log p_0) / n`` (``n = G_0 + G_1``, the labelled voxels) and
    ``Dice = 1 - f / 2 * sum_c I_c / D_c`` with ``I_c = sum p_c g_c``, ``D_c = sum p_c^2 + G_c + eps``,
    ``G_c = sum g_c`` (``counts``), ``f`` = 2 (paper) or 1 (reference). Backward: ``dCE/dd = (p_1 g_0 - p_0 g_1) / n``
    and ``dDice/dd = -f / 2 * p_1 p_0 * (g_1 / D_1 - g_0 / D_0 - 2 I_1 p_1 / D_1^2 + 2 I_0 p_0 / D_0^2)``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        d: torch.Tensor,
        log_p0: torch.Tensor,
        log_p1: torch.Tensor,
        p0: torch.Tensor,
        p1: torch.Tensor,
        g0: torch.Tensor,
        g1: torch.Tensor,
        counts: torch.Tensor,
        factor: float,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with _no_autocast(d):
            n = counts.sum()
            ce = -torch.mul(log_p1, g1).addcmul_(log_p0, g0).sum() / n
            inter = torch.stack([_dot(p0, g0), _dot(p1, g1)])
            denominator = torch.stack([_dot(p0, p0), _dot(p1, p1)]) + counts + eps
            dice = (1.0 - factor * inter / denominator).mean()
        ctx.save_for_backward(p0, p1, g0, g1, n, inter, denominator)
        ctx.factor = factor
        return ce, dice

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_ce: torch.Tensor, grad_dice: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        p0, p1, g0, g1, n, inter, denominator = ctx.saved_tensors
        c = -0.5 * ctx.factor * grad_dice
        on_g = c / denominator  # (2,): the factors of g_1 and (negated) g_0 in the bracket
        on_p = 2.0 * c * inter / denominator**2  # of p_0 and (negated) p_1
        # the bracket's p terms with p_0 = 1 - p_1 (one pass fewer; off by the rounding of those terms only)
        grad = torch.addcmul(on_p[0], p1, -(on_p[1] + on_p[0]))
        grad.addcmul_(g1, on_g[1]).addcmul_(g0, -on_g[0]).mul_(p1).mul_(p0)
        ce_grad = torch.mul(p1, g0).addcmul_(p0, g1, value=-1.0)
        return grad.addcmul_(ce_grad, grad_ce / n), *([None] * 9)


class _TwoClassConsistency(torch.autograd.Function):
    """:class:`PyramidConsistencyLoss` of ``K`` two-class outputs (``paper`` or ``reference`` form).

    ``m_c = mean_k p_k,c``; ``D_k = sum_c m_c (log m_c - log p_k,c)``; ``||p_k - m||^2 = 2 (p_k,1 - m_1)^2``. The
    ``reference`` form's cubed differences of the two channels cancel exactly, leaving ``mean_k mean_i D_k``.
    With ``delta = p_k,1 - m_1``: ``dD_k/dd_k = delta`` and ``d||p_k - m||^2/dd_k = 4 delta p_1 p_0``; through
    the mean (``detach_mean=False``) ``dD_k/dm_1 = log(m_1 / m_0) - d_k`` and ``d||p_k - m||^2/dm_1 = -4 delta``,
    with ``dm_1/dd_k = p_k,1 p_k,0 / K``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, paper: bool, eps: float, detach_mean: bool, n_levels: int, *tensors: torch.Tensor
    ) -> torch.Tensor:
        """``tensors``: ``d``, ``log p_0``, ``log p_1``, ``p_0``, ``p_1`` of every level (``n_levels`` each)."""
        diffs, log_p0, log_p1, p0, p1 = (tensors[i * n_levels : (i + 1) * n_levels] for i in range(5))
        tiny = torch.finfo(torch.float32).tiny
        with _no_autocast(diffs[0]):
            m1, m0 = _mean(p1), _mean(p0)
            log_m1, log_m0 = m1.clamp_min(tiny).log_(), m0.clamp_min(tiny).log_()  # m log m = 0 at m = 0
            entropy = torch.mul(m1, log_m1).addcmul_(m0, log_m0).neg_()
            n = m1.numel()
            total = m1.new_zeros(())
            saved = []
            for k in range(n_levels):
                neg_kl = torch.addcmul(entropy, m1, log_p1[k]).addcmul_(m0, log_p0[k])  # -D_k = H(m) + sum m log p_k
                total = total - neg_kl.sum() / n
                delta = p1[k] - m1
                saved.append(delta)
                if paper:
                    w = neg_kl.exp_()  # exp(-D_k)
                    w_mean = w.sum() / n + eps
                    w_delta = w * delta
                    dist_w = 2.0 * _dot(w_delta, delta) / n  # mean_i ||p_k - m||^2 exp(-D_k)
                    total = total + dist_w / w_mean
                    saved += [w, w_delta, dist_w, w_mean]
        ctx.paper, ctx.detach_mean, ctx.n_levels, ctx.n = paper, detach_mean, n_levels, n
        through_mean = () if detach_mean else (log_m1 - log_m0, *diffs)
        ctx.save_for_backward(*p0, *p1, *saved, *through_mean)
        return total / n_levels

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n_levels, n = ctx.n_levels, ctx.n
        saved = ctx.saved_tensors
        p0, p1 = saved[:n_levels], saved[n_levels : 2 * n_levels]
        per = 5 if ctx.paper else 1
        levels = [saved[2 * n_levels + per * k : 2 * n_levels + per * (k + 1)] for k in range(n_levels)]
        scale = grad / (n_levels * n)
        grads = []
        for k, level in enumerate(levels):
            if ctx.paper:  # (4 p_1 p_0 - 2 delta^2 + Q / W) w delta / W + delta; Q = mean dist w, W = mean w + eps
                delta, _, w_delta, dist_w, w_mean = level
                g = torch.addcmul(dist_w / w_mean, p1[k], p0[k], value=4.0).addcmul_(delta, delta, value=-2.0)
                g = torch.addcmul(delta, g.mul_(w_delta), 1.0 / w_mean)
            else:
                g = level[0].clone()
            grads.append(g.mul_(scale))
        if not ctx.detach_mean:  # + p_k,1 p_k,0 / K * sum_j dL_j/dm_1
            logit_mean, diffs = saved[-n_levels - 1], saved[-n_levels:]
            total = None
            for k, level in enumerate(levels):
                e = logit_mean - diffs[k]  # dD_k/dm_1
                if ctx.paper:  # (-4 delta + e (Q / W - 2 delta^2)) w / W + e
                    delta, w, _, dist_w, w_mean = level
                    t = torch.mul(delta, delta).mul_(-2.0).add_(dist_w / w_mean).mul_(e).sub_(delta, alpha=4.0)
                    e = t.mul_(w).div_(w_mean).add_(e)
                total = e if total is None else total.add_(e)
            total.mul_(scale / n_levels)
            for k in range(n_levels):
                grads[k].addcmul_(torch.mul(p1[k], p0[k]), total)
        return None, None, None, None, *grads, *([None] * (4 * n_levels))


class _TwoClassSharpening(torch.autograd.Function):
    """One two-class output's ``mean_i (p_1 - s_1)^2`` with ``s_1 = sigmoid(d / T)`` (the sharpened ``p_1``; both
    channels' squared residuals are equal). ``d/dd = 2 (p_1 - s_1) (p_1 p_0 - [not detached] s_1 s_0 / T) / n``."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, d: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, temperature: float, detach_target: bool
    ) -> torch.Tensor:
        with _no_autocast(d):
            residual = p1 - torch.sigmoid(d / temperature)
            value = _dot(residual, residual) / residual.numel()
        ctx.temperature, ctx.detach_target = temperature, detach_target
        ctx.save_for_backward(d, p0, p1, residual)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        d, p0, p1, residual = ctx.saved_tensors
        slope = torch.mul(p1, p0)  # dp_1/dd
        if not ctx.detach_target:  # - ds_1/dd = s_1 s_0 / T
            s1, s0 = torch.sigmoid(d / ctx.temperature), torch.sigmoid(d / -ctx.temperature)
            slope.sub_(s1.mul_(s0), alpha=1.0 / ctx.temperature)
        return slope.mul_(residual).mul_(2.0 * grad / residual.numel()), None, None, None, None


class SoftmaxPyramid:
    """The log-softmax and softmax over the class channel of every pyramid output, computed once.

    For outputs ``P_k`` ``(B, C, H, W, D)``: ``log_probs[k] = log_softmax(float(P_k))`` and
    ``probs[k] = exp(log_probs[k])``, both float32 and differentiable. :meth:`rows` gives the same rows of every
    level as views (no copy), so one pyramid over the whole student batch serves every loss term.

    A two-class pyramid (:meth:`two_class`; what :meth:`from_logits` builds when ``C == 2``) holds instead the
    logit difference ``logit_diff[k] = z_1 - z_0`` ``(B, 1, *spatial)`` (float32, differentiable) with its
    one-channel probabilities and log-probabilities (``sigmoid(+-d)``, ``-softplus(-+d)``, kept without gradient
    for the losses' closed forms, which differentiate through ``logit_diff`` themselves); its ``log_probs`` and
    ``probs`` are built from ``logit_diff`` (two channels, differentiable) on first use, for any other caller.
    ``logit_diff`` is ``None`` for a general pyramid.

    Args:
        log_probs: one ``(B, C, *spatial)`` tensor per output.
        probs: ``exp`` of each of ``log_probs``, the same shapes.
    """

    def __init__(self, log_probs: Sequence[torch.Tensor], probs: Sequence[torch.Tensor]) -> None:
        self._log_probs: list[torch.Tensor] | None = list(log_probs)
        self._probs: list[torch.Tensor] | None = list(probs)
        self.logit_diff: list[torch.Tensor] | None = None
        self._two: _TwoClassParts | None = None
        _as_pyramid(self._log_probs)
        if [p.shape for p in self._probs] != [lp.shape for lp in self._log_probs]:
            raise ValueError("probs and log_probs must hold one tensor of the same shape per output.")

    @classmethod
    def from_logits(cls, logits: torch.Tensor | Sequence[torch.Tensor]) -> SoftmaxPyramid:
        """From the outputs' logits (one tensor is a one-level pyramid); each level is cast to float32 once.
        Two classes give the two-class pyramid (:meth:`two_class` of ``z_1 - z_0``)."""
        levels = _as_pyramid(logits)
        if levels[0].shape[1] == 2:
            return cls.two_class([_LogitDifference.apply(level) for level in levels])
        log_probs = [F.log_softmax(level.float(), dim=1) for level in levels]
        return cls(log_probs, [lp.exp() for lp in log_probs])

    @classmethod
    def two_class(cls, logit_diff: torch.Tensor | Sequence[torch.Tensor]) -> SoftmaxPyramid:
        """The two-class pyramid of the logit differences ``d_k = z_1 - z_0``, each ``(B, 1, *spatial)`` (cast to
        float32; one tensor is a one-level pyramid): ``p_1 = sigmoid(d)``, ``p_0 = sigmoid(-d)``,
        ``log p_1 = logsigmoid(d)`` and ``log p_0 = log p_1 - d``, computed once, without gradient."""
        diffs = [d.float() for d in ([logit_diff] if isinstance(logit_diff, torch.Tensor) else logit_diff)]
        shape = diffs[0].shape if diffs else None
        if shape is None or len(shape) < 3 or shape[1] != 1 or any(d.shape != shape for d in diffs):
            raise ValueError(
                "logit_diff must hold at least one (B, 1, *spatial) tensor, all of one shape, got "
                f"{[tuple(d.shape) for d in diffs]}."
            )
        with torch.no_grad(), _no_autocast(diffs[0]):
            log_p1 = [F.logsigmoid(d) for d in diffs]
            parts = _TwoClassParts(
                [lp - d for lp, d in zip(log_p1, diffs)],
                log_p1,
                [torch.sigmoid(-d) for d in diffs],
                [torch.sigmoid(d) for d in diffs],
            )
        return cls._from_two_class(diffs, parts)

    @classmethod
    def _from_two_class(cls, logit_diff: list[torch.Tensor], parts: _TwoClassParts) -> SoftmaxPyramid:
        pyramid = cls.__new__(cls)
        pyramid._log_probs = pyramid._probs = None
        pyramid.logit_diff, pyramid._two = logit_diff, parts
        return pyramid

    @property
    def log_probs(self) -> list[torch.Tensor]:
        """``log_softmax`` of every output, ``(B, C, *spatial)`` float32 (two-class: built on first use)."""
        if self._log_probs is None:
            self._log_probs = [torch.cat([F.logsigmoid(-d), F.logsigmoid(d)], dim=1) for d in self.logit_diff]
        return self._log_probs

    @property
    def probs(self) -> list[torch.Tensor]:
        """``softmax`` of every output, ``(B, C, *spatial)`` float32 (two-class: built on first use)."""
        if self._probs is None:
            self._probs = [torch.cat([torch.sigmoid(-d), torch.sigmoid(d)], dim=1) for d in self.logit_diff]
        return self._probs

    def rows(self, start: int, stop: int | None = None) -> SoftmaxPyramid:
        """Batch rows ``[start, stop)`` of every level, as views."""
        if self._two is not None:
            return self._from_two_class([d[start:stop] for d in self.logit_diff], self._two.rows(start, stop))
        return SoftmaxPyramid([lp[start:stop] for lp in self.log_probs], [p[start:stop] for p in self.probs])

    @property
    def shape(self) -> torch.Size:
        """``(B, C, *spatial)`` of every level."""
        if self.logit_diff is not None:
            d = self.logit_diff[0].shape
            return torch.Size((d[0], 2, *d[2:]))
        return self.log_probs[0].shape

    def __len__(self) -> int:
        return len(self.logit_diff) if self.logit_diff is not None else len(self.log_probs)

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
        if pyramid.logit_diff is not None:
            return self._two_class(pyramid, target)
        target_onehot = one_hot(target, shape[1])
        g_sq = target_onehot.sum(dim=_pooled_dims(target_onehot))  # = sum(g^2) for a 0/1 target, exact
        ce = pyramid.log_probs[0].new_zeros(())
        dice = pyramid.log_probs[0].new_zeros(())
        for log_p, p in pyramid:
            ce = ce + F.nll_loss(log_p, target)  # = cross_entropy(P_k, y): log_p is its log-softmax
            dice = dice + _soft_dice(p, target_onehot, g_sq, self.dice_form, DICE_EPS)
        return self.weight * (ce + dice), {"ce": ce.detach(), "dice": dice.detach()}

    def _two_class(self, pyramid: SoftmaxPyramid, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`from_probs` of a two-class pyramid (closed form; labels other than 0 and 1 count in neither class
        and not in the cross-entropy's mean, as ``nll_loss``'s ``ignore_index``)."""
        target = target.unsqueeze(1)
        g0, g1 = (target == 0).float(), (target == 1).float()
        counts = torch.stack([g0.sum(), g1.sum()])
        factor = 2.0 if self.dice_form == "paper" else 1.0
        ce = dice = pyramid.logit_diff[0].new_zeros(())
        for k, d in enumerate(pyramid.logit_diff):
            ce_k, dice_k = _TwoClassSupervised.apply(d, *pyramid._two.level(k), g0, g1, counts, factor, DICE_EPS)
            ce, dice = ce + ce_k, dice + dice_k
        return self.weight * (ce + dice), {"ce": ce.detach(), "dice": dice.detach()}


class _UnsupervisedPyramidLoss(nn.Module, abc.ABC):
    """A loss of the pyramid outputs alone: ``forward(logits)`` is ``from_probs`` of their shared softmaxes (each
    subclass defines ``from_probs``; the base cannot be instantiated)."""

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            logits: the pyramid outputs ``[P1, ..., P4]``, each ``(B, C, H, W, D)``.

        Returns:
            a scalar tensor (float32).
        """
        return self.from_probs(SoftmaxPyramid.from_logits(logits))

    @abc.abstractmethod
    def from_probs(self, pyramid: SoftmaxPyramid) -> torch.Tensor:
        """The loss from precomputed probabilities (:class:`SoftmaxPyramid` of the rows)."""


class PyramidConsistencyLoss(_UnsupervisedPyramidLoss):
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

    def from_probs(self, pyramid: SoftmaxPyramid) -> torch.Tensor:
        """:meth:`forward` on precomputed probabilities (``pyramid``: :class:`SoftmaxPyramid` of the rows)."""
        if pyramid.logit_diff is not None:
            parts = pyramid._two
            return _TwoClassConsistency.apply(
                self.form == "paper",
                self.eps,
                self.detach_mean,
                len(pyramid),
                *pyramid.logit_diff,
                *parts.log_p0,
                *parts.log_p1,
                *parts.p0,
                *parts.p1,
            )
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


class SharpeningLoss(_UnsupervisedPyramidLoss):
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

    def from_probs(self, pyramid: SoftmaxPyramid) -> torch.Tensor:
        """:meth:`forward` on precomputed probabilities (``pyramid``: :class:`SoftmaxPyramid` of the rows)."""
        if pyramid.logit_diff is not None:
            total = pyramid.logit_diff[0].new_zeros(())
            for k, d in enumerate(pyramid.logit_diff):
                _, _, p0, p1 = pyramid._two.level(k)
                total = total + _TwoClassSharpening.apply(d, p0, p1, self.temperature, self.detach_target)
            return total / len(pyramid)
        total = pyramid.log_probs[0].new_zeros(())
        for log_p, p in pyramid:
            target = self.sharpen(log_p)
            if self.detach_target:
                target = target.detach()
            total = total + (p - target).pow(2).mean()
        return total / len(pyramid)
