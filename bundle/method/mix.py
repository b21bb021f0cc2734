"""PLGDF's input perturbation (bounded Gaussian noise) and Mix module (unlabelled-dominant mixup with labelled data)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["add_noise", "MixModule"]


def add_noise(
    x: torch.Tensor, std: float = 0.1, clip: float = 0.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n(x) = x + clamp(N(0, std^2), -clip, clip)``, drawn independently for every element of ``x``.

    Args:
        x: any tensor, e.g. a batch ``(B, C, H, W, D)``; the noise has its dtype and device.
        std: standard deviation of the Gaussian. Defaults to 0.1.
        clip: the noise is clamped to ``[-clip, clip]``. Defaults to 0.2.
        generator: optional ``torch.Generator`` (on ``x``'s device) for the draw; ``None`` uses the global RNG.

    Returns:
        a new tensor of ``x``'s shape.
    """
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}.")
    if clip < 0:
        raise ValueError(f"clip must be >= 0, got {clip}.")
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
    return x + noise.clamp(-clip, clip)


class MixModule(nn.Module):
    """Blend each unlabelled image with a random labelled one, the unlabelled image dominating.

    For each row ``n`` of ``x_u``: ``lambda ~ Beta(alpha, alpha)``, ``lambda' = max(lambda, 1 - lambda)``, a partner
    ``m`` uniform in ``[0, M)``, and

    ``x_mix[n] = lambda'[n] * x_u[n] + (1 - lambda'[n]) * x_l[m]``.

    Since ``lambda' >= 0.5`` the mixed image keeps the target (pseudo-label) of its unlabelled source. All draws use
    torch's RNG on the input's device (``torch.manual_seed`` makes them reproducible). The module has no parameters.

    Args:
        alpha: the Beta concentration (> 0). Defaults to 0.75.
    """

    def __init__(self, alpha: float = 0.75) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}.")
        self.alpha = float(alpha)

    def forward(self, x_u: torch.Tensor, x_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x_u: unlabelled (noisy) images ``(N, C, H, W, D)``.
            x_l: labelled (noisy) images ``(M, C, H, W, D)``, the same shape apart from the batch size.

        Returns:
            ``(x_mix, lam)``: ``x_mix`` ``(N, C, H, W, D)`` and the weights ``lambda'`` ``(N,)`` on ``x_u``
            (float32, in ``[0.5, 1]``).
        """
        if x_u.shape[1:] != x_l.shape[1:]:
            raise ValueError(
                f"x_u and x_l must match apart from the batch size, got {tuple(x_u.shape)} and " f"{tuple(x_l.shape)}."
            )
        n, m = x_u.shape[0], x_l.shape[0]
        if n < 1 or m < 1:
            raise ValueError(f"x_u and x_l need at least one row each, got N={n}, M={m}.")
        concentration = torch.tensor(self.alpha, device=x_u.device, dtype=torch.float32)
        lam = torch.distributions.Beta(concentration, concentration).sample((n,))
        lam = torch.maximum(lam, 1.0 - lam)
        partner = torch.randint(0, m, (n,), device=x_u.device)
        w = lam.to(x_u.dtype).view(n, *([1] * (x_u.dim() - 1)))
        x_mix = w * x_u + (1.0 - w) * x_l[partner]
        return x_mix, lam
