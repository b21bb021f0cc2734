"""The PLGDF semi-supervised training step as a MONAI ``SupervisedTrainer``.

One iteration (``docs/method_notes.md``, "One iteration"):

1. ``x_u_noisy`` = K noisy copies of the unlabelled batch (copy-major); ``x_l_noisy`` = n(x_l).
2. Pseudo-labels: one batched no-grad teacher forward over all K copies; softmax of P1 averaged
   over the copies; argmax.
3. Mix: every noisy unlabelled copy is blended with a random noisy labelled row,
   ``x_mix = lambda' n(x_u) + (1 - lambda') n(x_l)``, ``lambda' >= 0.5``; its target is the
   pseudo-label of its unlabelled source.
4. One student forward over ``[x_l_noisy, x_mix, x_u]`` giving P1..P4 for every row.
5. ``L = L_sup + L_semi + lambda(t) (L_sharp + L_consis)``; SGD step; EMA update of the teacher.

Every component is a switch (the paper's ablation). Loss terms stay on the device: the step does
no host synchronisation; handlers read the scalars when they log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from bundle.method.losses import PyramidConsistencyLoss, PyramidSupervisedLoss, SharpeningLoss
from bundle.method.mix import MixModule, add_noise
from bundle.method.rampup import ConsistencyRampUp
from bundle.method.teacher import EMATeacher

__all__ = ["PLGDFTrainer"]


def _as_list(outputs: Any) -> list[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


SEMI_WARMUPS = ("none", "rampup", "confidence")


class PLGDFTrainer(SupervisedTrainer):
    """Semi-supervised PLGDF trainer.

    Args:
        device: device of the run.
        max_epochs: number of engine epochs; one epoch is ``epoch_length`` iterations.
        train_data_loader: labelled loader (``image``, ``label``); it drives the epochs.
        network: the student (:class:`bundle.method.networks.PLGDFVNet`, possibly DDP-wrapped).
        optimizer: the student's optimizer.
        unlabeled_loader: endless iterable of unlabelled batches (``image``), e.g.
            :class:`bundle.data.samplers.EndlessLoader`. ``None`` (or ``semi=False``) trains on L_sup alone.
        teacher: the EMA teacher; required when any unlabelled term is on.
        sup_loss: L_sup / L_semi module. Defaults to ``PyramidSupervisedLoss()``.
        consistency_loss: L_consis module. Defaults to ``PyramidConsistencyLoss()``.
        sharpening_loss: L_sharp module. Defaults to ``SharpeningLoss()``.
        rampup: ``lambda(t)``. Defaults to ``ConsistencyRampUp()``.
        mix: the mix module; ``None`` applies L_semi to the noisy unlabelled copies directly.
        n_copies: K, noisy copies of each unlabelled patch for the teacher. Defaults to 2.
        noise_std, noise_clip: the noise n(x). Defaults to 0.1 and 0.2.
        noise_labeled: add noise to the labelled rows. Defaults to True.
        semi, consistency, sharpening: switch L_semi, L_consis and L_sharp. Default True.
        semi_on_clean: L_semi also on the clean unlabelled rows against their pseudo-labels, as the paper's
            Algorithm 1 (line 14) writes it; the authors' code and the paper's prose apply it to the mixed rows
            only. Default False.
        semi_warmup: weight of L_semi early in training, when the teacher is still poor: ``"none"`` (1, the
            paper), ``"rampup"`` (the shape of ``lambda(t)``, ``rampup(t) / rampup.weight``: 0.007 at t = 0, 1 at
            the end of the ramp-up) or ``"confidence"`` (the teacher's mean confidence over the unlabelled voxels,
            rescaled from ``1/C..1`` to ``0..1``). Default ``"none"``.
        amp: autocast on CUDA (ignored on CPU). ``amp_dtype``: "bfloat16" or "float16" (with a GradScaler).
        amp_cpu: bfloat16 autocast on CPU (a numerics change, off by default; fast only on CPUs with native bf16
            instructions such as AVX512-BF16 or AMX, slower than fp32 elsewhere: measure with
            ``python -m scripts.bench_speed --precision bf16``).
        channels_last: run the networks in ``torch.channels_last_3d`` memory format.
        epoch_length, non_blocking, train_handlers, key_train_metric, postprocessing: as in SupervisedTrainer.

    ``schedule_start`` (0) is the number of iterations the student had before this run: ``t``, the iteration of
    lambda(t) and of the EMA, counts from it (set by :class:`bundle.handlers.schedule.ContinueSchedule`).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        unlabeled_loader: Iterable | None = None,
        teacher: EMATeacher | None = None,
        sup_loss: Callable | None = None,
        consistency_loss: Callable | None = None,
        sharpening_loss: Callable | None = None,
        rampup: Callable[[int], float] | None = None,
        mix: MixModule | None = None,
        n_copies: int = 2,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        noise_labeled: bool = True,
        semi: bool = True,
        consistency: bool = True,
        sharpening: bool = True,
        semi_on_clean: bool = False,
        semi_warmup: str = "none",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        amp_cpu: bool = False,
        channels_last: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = True,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        postprocessing: Callable | None = None,
    ):
        device = torch.device(device)
        use_amp = bool(amp) and device.type == "cuda"
        if semi_warmup not in SEMI_WARMUPS:
            raise ValueError(f"semi_warmup must be one of {SEMI_WARMUPS}, got {semi_warmup!r}")
        if amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {amp_dtype!r}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=sup_loss or PyramidSupervisedLoss(),
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            train_handlers=train_handlers,
            key_train_metric=key_train_metric,
            postprocessing=postprocessing,
            amp=use_amp,
            amp_kwargs={"dtype": getattr(torch, amp_dtype)} if use_amp else None,
            decollate=False,
        )
        # bf16 needs no loss scaling; fp16 keeps the GradScaler SupervisedTrainer made.
        if use_amp and amp_dtype == "bfloat16":
            self.scaler = None
        self.use_amp = use_amp
        self.amp_cpu = bool(amp_cpu) and device.type == "cpu"
        self.unlabeled_loader = unlabeled_loader
        self.unlabeled_iter = iter(unlabeled_loader) if unlabeled_loader is not None else None
        self.use_unlabeled = self.unlabeled_iter is not None and (semi or consistency or sharpening)
        if self.use_unlabeled and teacher is None:
            raise ValueError("an EMA teacher is required when unlabelled loss terms are on")
        if n_copies < 1:
            raise ValueError(f"n_copies must be >= 1, got {n_copies}")
        self.teacher = teacher
        self.consistency_loss = consistency_loss or PyramidConsistencyLoss()
        self.sharpening_loss = sharpening_loss or SharpeningLoss()
        self.rampup = rampup or ConsistencyRampUp()
        self.schedule_start = 0
        self.mix = mix
        self.n_copies = n_copies
        self.noise_std, self.noise_clip, self.noise_labeled = noise_std, noise_clip, noise_labeled
        self.semi, self.consistency, self.sharpening = semi, consistency, sharpening
        self.semi_on_clean, self.semi_warmup = bool(semi_on_clean), semi_warmup
        self._confidence: torch.Tensor | None = None  # the teacher's mean confidence of this iteration
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        if channels_last:
            self.network.to(memory_format=self.memory_format)
            if teacher is not None:
                teacher.model.to(memory_format=self.memory_format)

    # -- helpers ---------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.to(self.state.device, non_blocking=self.non_blocking)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        return add_noise(x, std=self.noise_std, clip=self.noise_clip)

    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", **self.amp_kwargs)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp_cpu)

    def next_unlabeled(self) -> torch.Tensor:
        batch = next(self.unlabeled_iter)
        return self._to_device(batch[Keys.IMAGE] if isinstance(batch, dict) else batch)

    # -- the step --------------------------------------------------------------------------------
    def _iteration(self, engine: PLGDFTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        t = engine.schedule_start + engine.state.iteration - 1  # 0-based iteration index for lambda(t) and the EMA
        x_l = engine._to_device(batchdata[Keys.IMAGE])
        y_l = engine._to_device(batchdata[Keys.LABEL]).long()
        n_l = x_l.shape[0]
        x_l_in = engine._noise(x_l) if engine.noise_labeled else x_l
        rows = [x_l_in]
        y_hat = None
        if engine.use_unlabeled:
            x_u = engine.next_unlabeled()
            k = engine.n_copies
            x_u_noisy = engine._noise(x_u.repeat(k, *([1] * (x_u.ndim - 1))))  # copy-major
            with engine._autocast():
                y_hat, mean_probs = engine.teacher.pseudo_labels(
                    x_u_noisy.contiguous(memory_format=engine.memory_format), k
                )
            engine._confidence = mean_probs.max(dim=1).values.mean() if engine.semi_warmup == "confidence" else None
            y_hat = y_hat.repeat(k, *([1] * (y_hat.ndim - 1)))  # target of every noisy copy
            x_semi = engine.mix(x_u_noisy, x_l_in)[0] if engine.mix is not None else x_u_noisy
            rows += [x_semi, x_u]
        inputs = torch.cat(rows, 0).contiguous(memory_format=engine.memory_format)
        engine.state.output = {Keys.IMAGE: x_l, Keys.LABEL: y_l}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with engine._autocast():
            outputs = _as_list(engine.network(inputs))
            engine.state.output[Keys.PRED] = outputs[0][:n_l]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine._losses(outputs, n_l, y_l, y_hat, t)
        loss = terms["loss"]
        engine.state.output.update({key: value.detach() for key, value in terms.items()})
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.state.output["lambda"] = terms["lambda"]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None and engine.use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        if engine.teacher is not None:
            engine.teacher.update(engine.network, t + 1)  # 1-based, as the authors: a=0.5 first
        engine.state.output["label_fg"] = (y_l > 0).float().mean()  # to compare with pseudo_fg
        if y_hat is not None:
            engine.state.output["pseudo_fg"] = (y_hat > 0).float().mean()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _losses(
        self, outputs: list[torch.Tensor], n_l: int, y_l: torch.Tensor, y_hat: torch.Tensor | None, t: int
    ) -> dict[str, torch.Tensor]:
        """All loss terms from the student's outputs over ``[labelled, semi rows, clean unlabelled]``."""
        zero = outputs[0].new_zeros((), dtype=torch.float32)
        loss_sup, _ = self.loss_function([o[:n_l] for o in outputs], y_l)
        terms = {"loss_sup": loss_sup, "loss_semi": zero, "loss_consis": zero, "loss_sharp": zero}
        weight = float(self.rampup(t)) if self.use_unlabeled else 0.0
        if y_hat is not None:
            n_semi = y_hat.shape[0]
            if self.semi:
                if self.semi_on_clean:  # the clean rows' targets: the first copy's pseudo-labels (one per image)
                    n_clean = outputs[0].shape[0] - n_l - n_semi
                    target = torch.cat([y_hat, y_hat[:n_clean]], 0)
                    terms["loss_semi"], _ = self.loss_function([o[n_l:] for o in outputs], target)
                else:
                    terms["loss_semi"], _ = self.loss_function([o[n_l : n_l + n_semi] for o in outputs], y_hat)
                terms["loss_semi"] = terms["loss_semi"] * self._semi_weight(t, outputs[0].shape[1])
            if self.consistency:
                terms["loss_consis"] = self.consistency_loss([o[n_l:] for o in outputs])
            if self.sharpening:
                terms["loss_sharp"] = self.sharpening_loss([o[n_l + n_semi :] for o in outputs])
        terms["loss"] = terms["loss_sup"] + terms["loss_semi"] + weight * (terms["loss_sharp"] + terms["loss_consis"])
        terms["lambda"] = torch.tensor(weight)
        return terms

    def _semi_weight(self, t: int, num_classes: int) -> float:
        """The factor of L_semi at 0-based iteration ``t`` (``semi_warmup``)."""
        if self.semi_warmup == "rampup":
            return float(self.rampup(t)) / self.rampup.weight if self.rampup.weight > 0 else 1.0
        if self.semi_warmup == "confidence" and self._confidence is not None:
            floor = 1.0 / num_classes
            return float(((self._confidence - floor) / (1.0 - floor)).clamp(0.0, 1.0))
        return 1.0
