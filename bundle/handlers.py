"""Ignite handlers of the PLGDF training run.

- :class:`LossMonitor`: reads every loss term, lambda(t), the learning rate and the pseudo-label
  foreground fraction once per iteration (the only host synchronisation of a step), stops the run
  with :class:`NonFiniteLossError` naming the iteration and the term when a value is NaN/Inf,
  appends the values to ``<output_dir>/log.jsonl`` and prints progress with an ETA.
- :class:`TrainingCheckpointer`: full checkpoints (student, teacher, optimizer, lr scheduler,
  engine iteration, unlabelled stream position, RNG states) written atomically as plain tensors:
  ``checkpoint_last.pt`` at the end of every engine epoch (after validation) and of the run, periodic
  ``checkpoint_iter_<N>.pt``, ``checkpoint_best.pt`` on the best validation metric, and the flat
  student state_dict ``model.pt`` for inference. Resumes from ``checkpoint_last.pt``, also from a
  checkpoint written mid-epoch, continuing the same data order and random draws (global RNGs, the
  MONAI random transforms' own states, the labelled sampler and unlabelled stream positions): with
  ``num_workers=0`` an interrupted and resumed run computes the same losses as an uninterrupted one.
  The first SIGINT/SIGTERM saves a checkpoint after the current iteration and exits with status
  ``128 + signal``; a second one stops at once without saving. Errors never overwrite checkpoints.
- :func:`loss_terms`: output transform giving the scalar terms to MONAI's stats handlers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = [
    "LossMonitor",
    "TrainingCheckpointer",
    "NonFiniteLossError",
    "CheckpointError",
    "loss_terms",
    "atomic_save",
    "safe_load",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger("plgdf")
SCALAR_KEYS = ("loss", "loss_sup", "loss_semi", "loss_consis", "loss_sharp", "lambda", "pseudo_fg", "label_fg")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or Inf."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or holds something other than plain tensors."""


def loss_terms(output: Mapping) -> dict[str, float]:
    """The scalar terms of a trainer output as floats (for StatsHandler / TensorBoardStatsHandler)."""
    keys = [k for k in SCALAR_KEYS if k in output]
    values = torch.stack([torch.as_tensor(output[k], dtype=torch.float32).detach().cpu() for k in keys]).tolist()
    return dict(zip(keys, values))


# -- checkpoint I/O --------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... by cause
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled objects other than tensors and plain "
                f"containers (possible code); only plain-tensor checkpoints are accepted ({msg})"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or truncated file ({msg})") from None


def _np_state(state: tuple) -> dict:
    """A NumPy ``MT19937`` state tuple as plain tensors and numbers."""
    return {
        "keys": torch.from_numpy(np.asarray(state[1]).astype(np.int64)),
        "pos": int(state[2]),
        "has_gauss": int(state[3]),
        "cached_gaussian": float(state[4]),
    }


def _np_state_tuple(n: Mapping) -> tuple:
    return "MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states as plain tensors and ints."""
    state = {
        "python": random.getstate(),
        "numpy": _np_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(_np_state_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def transform_random_states(*transforms: Any) -> list[np.random.RandomState]:
    """The distinct ``np.random.RandomState`` objects of the MONAI random transforms reachable from ``transforms``.

    MONAI random transforms draw from their own ``R``, not from the global RNGs: a checkpoint must hold these
    states too for a resumed run to draw the same crops and flips. The walk follows ``Compose.transforms``
    and the attributes of transforms (e.g. the cropper inside ``RandSpatialCropd``) in a fixed order.
    """
    from monai.transforms import Randomizable, Transform

    states: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > 10 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            children = obj
        elif isinstance(obj, (Transform, Randomizable)):
            rs = getattr(obj, "R", None)
            if isinstance(rs, np.random.RandomState) and id(rs) not in seen:
                seen.add(id(rs))
                states.append(rs)
            children = list(vars(obj).values())
        else:
            return
        for child in children:
            if isinstance(child, (list, tuple, Transform, Randomizable)):
                visit(child, depth + 1)

    for t in transforms:
        if t is not None:
            visit(t, 0)
    return states


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") else module


def _finite_output(output: Any) -> bool:
    """False when the iteration output's loss terms hold NaN/Inf (True when there is nothing to check)."""
    if not isinstance(output, Mapping):
        return True
    terms = [torch.as_tensor(output[k]).detach().float() for k in SCALAR_KEYS if k in output]
    return not terms or bool(torch.isfinite(torch.stack([t.reshape(()) for t in terms])).all())


def _dataset_transform(loader: Any) -> Any:
    """``loader.dataset.transform`` of a DataLoader, or of the DataLoader inside an ``EndlessLoader``."""
    loader = getattr(loader, "loader", loader)
    return getattr(getattr(loader, "dataset", None), "transform", None)


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


# -- loss monitor / logger ---------------------------------------------------------------------------
class LossMonitor:
    """Per-iteration scalars: non-finite check, JSON-lines log and console progress.

    Args:
        output_dir: folder of ``log.jsonl``; ``None`` keeps no file.
        print_interval: print a progress line every this many iterations. Defaults to 10.
        optimizer: read its first param group's lr into the log. Defaults to None.
        log_file: name of the JSON-lines file. Defaults to "log.jsonl".
        validator: an evaluator whose key metric is logged as ``val_dice`` after each validation. Defaults to None.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        print_interval: int = 10,
        optimizer=None,
        log_file: str = "log.jsonl",
        validator: Engine | None = None,
    ):
        self.path = Path(output_dir) / log_file if output_dir else None
        self.print_interval = max(1, int(print_interval))
        self.optimizer = optimizer
        self._t0: float | None = None
        self._it0 = 0
        self.trainer: Engine | None = None
        self.validator = validator

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        if self.validator is not None:
            self.attach_validator(self.validator)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def attach_validator(self, evaluator: Engine, metric_name: str = "val_mean_dice") -> None:
        """Logs ``val_dice`` lines after every validation run of ``evaluator``."""

        def _log(engine: Engine) -> None:
            value = engine.state.metrics.get(metric_name)
            if value is None:
                return
            it = self.trainer.state.iteration if self.trainer is not None else -1
            best = getattr(engine.state, "best_metric", float("nan"))
            self._write({"iteration": it, "val_dice": float(value)})
            logger.info(f"iteration {it}: validation {metric_name} {float(value):.4f} (best {float(best):.4f})")

        evaluator.add_event_handler(Events.COMPLETED, _log)

    def _started(self, engine: Engine) -> None:
        """Attach after :class:`TrainingCheckpointer`, so that a resumed run's iteration is already restored."""
        self._t0, self._it0 = time.perf_counter(), engine.state.iteration
        if self.path is not None and _is_rank0():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate(engine.state.iteration)

    def _truncate(self, iteration: int) -> None:
        """Drop records after ``iteration`` (a new run starts an empty log; a resumed run drops the iterations
        done after its checkpoint, which it repeats), so that the log holds each iteration once."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        keep = []
        for line in lines:
            try:
                if int(json.loads(line).get("iteration", 0)) <= iteration:
                    keep.append(line)
            except (ValueError, AttributeError):  # a line cut by a kill: dropped
                continue
        if len(keep) != len(lines):
            tmp = self.path.with_name(f".{self.path.name}.tmp.{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, self.path)

    def _write(self, record: dict) -> None:
        if self.path is not None and _is_rank0():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _iteration(self, engine: Engine) -> None:
        values = loss_terms(engine.state.output)
        it = engine.state.iteration
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            culprits = [k for k in bad if k != "loss"] or bad  # name the term, not only the total
            raise NonFiniteLossError(
                f"non-finite loss term {', '.join(f'{k} = {values[k]}' for k in culprits)} at iteration {it}; "
                f"all terms: {', '.join(f'{k}={v:.4g}' for k, v in values.items())}"
            )
        if self.optimizer is not None:
            values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self._write({"iteration": it, **values})
        if it % self.print_interval == 0 and _is_rank0():
            done = it - self._it0
            total = engine.state.max_epochs * engine.state.epoch_length
            rate = (time.perf_counter() - self._t0) / max(done, 1)
            eta = rate * (total - it)
            terms = " ".join(f"{k}={v:.4f}" for k, v in values.items() if k != "loss")
            logger.info(
                f"iteration {it}/{total} loss={values['loss']:.4f} {terms} "
                f"({rate:.2f} s/it, ETA {time.strftime('%H:%M:%S', time.gmtime(eta))})"
            )


# -- checkpoints -------------------------------------------------------------------------------------
class TrainingCheckpointer:
    """Atomic full checkpoints, best-model tracking, resume and save-on-signal.

    Args:
        output_dir: folder of ``checkpoint_last.pt``, ``checkpoint_best.pt``, ``checkpoint_iter_<N>.pt``.
        network: the student; ``teacher``: the :class:`bundle.teacher.EMATeacher` (or None).
        optimizer, lr_scheduler: saved and restored (scheduler may be None).
        unlabeled_loader: object with ``state_dict``/``load_state_dict`` (the stream position), or None.
        model_file: where the flat student state_dict for inference goes. Defaults to None (not written).
        periodic_interval: iterations between kept ``checkpoint_iter_<N>.pt``; 0 disables. Defaults to 0.
        resume: continue from ``checkpoint_last.pt`` when it exists. Defaults to False.
        metric_name: validation metric that defines "best". Defaults to "val_mean_dice".
        handle_signals: on SIGINT/SIGTERM finish the current iteration, save, and stop. Defaults to True.
        validator: the evaluator whose ``metric_name`` defines the best checkpoint. Defaults to None.
    """

    def __init__(
        self,
        output_dir: str,
        network: torch.nn.Module,
        teacher: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        unlabeled_loader: Any = None,
        model_file: str | None = None,
        periodic_interval: int = 0,
        resume: bool = False,
        metric_name: str = "val_mean_dice",
        handle_signals: bool = True,
        validator: Engine | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.network, self.teacher, self.optimizer, self.lr_scheduler = network, teacher, optimizer, lr_scheduler
        self.unlabeled_loader = unlabeled_loader
        self.model_file = Path(model_file) if model_file else None
        self.periodic_interval = int(periodic_interval)
        self.resume, self.metric_name, self.handle_signals = bool(resume), metric_name, handle_signals
        self.best_metric, self.best_iteration = -math.inf, -1
        self.trainer: Engine | None = None
        self.validator = validator
        self._signal: int | None = None
        self._old_handlers: dict = {}
        self._pending_rng: Mapping | None = None

    @property
    def last_path(self) -> Path:
        return self.output_dir / "checkpoint_last.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "checkpoint_best.pt"

    # state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        trainer = self.trainer
        state = {
            "network": {k: v.detach().clone() for k, v in _unwrap(self.network).state_dict().items()},
            "iteration": trainer.state.iteration if trainer else 0,
            "epoch": trainer.state.epoch if trainer else 0,
            "best_metric": self.best_metric,
            "best_iteration": self.best_iteration,
            "rng": rng_state(),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.unlabeled_loader is not None and hasattr(self.unlabeled_loader, "state_dict"):
            state["unlabeled_loader"] = self.unlabeled_loader.state_dict()
        state["transforms_rng"] = [_np_state(rs.get_state()) for rs in self._transform_states()]
        return state

    def _transform_states(self) -> list[np.random.RandomState]:
        loaders = (getattr(self.trainer, "data_loader", None), self.unlabeled_loader)
        return transform_random_states(*(_dataset_transform(loader) for loader in loaders))

    def load_state_dict(self, state: Mapping, path: Path | str = "checkpoint") -> None:
        missing = [k for k in ("network", "iteration", "epoch", "rng") if k not in state]
        if self.teacher is not None and "teacher" not in state:
            missing.append("teacher")
        if self.optimizer is not None and "optimizer" not in state:
            missing.append("optimizer")
        if missing:
            raise CheckpointError(f"{path} is not a full training checkpoint: missing {missing}")
        _unwrap(self.network).load_state_dict(state["network"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.unlabeled_loader is not None and "unlabeled_loader" in state:
            self.unlabeled_loader.load_state_dict(state["unlabeled_loader"])
        self.best_metric = float(state.get("best_metric", -math.inf))
        self.best_iteration = int(state.get("best_iteration", -1))
        if "transforms_rng" in state:
            targets = self._transform_states()
            if len(targets) == len(state["transforms_rng"]):
                for rs, saved in zip(targets, state["transforms_rng"]):
                    rs.set_state(_np_state_tuple(saved))
            else:
                logger.warning(
                    f"{path}: {len(state['transforms_rng'])} random-transform states saved but the pipeline has "
                    f"{len(targets)}: random augmentation does not continue the interrupted sequence"
                )
        set_rng_state(state["rng"])  # last: restoring the other parts may draw random numbers

    def save(self, path: Path | None = None) -> Path | None:
        if not _is_rank0():
            return None
        return atomic_save(self.state_dict(), path or self.last_path)

    def export_model(self, state_dict: Mapping | None = None) -> None:
        """Write the flat student state_dict (plain tensors) to ``model_file``."""
        if self.model_file is None or not _is_rank0():
            return
        sd = state_dict if state_dict is not None else _unwrap(self.network).state_dict()
        atomic_save({k: v.detach().cpu().clone() for k, v in sd.items()}, self.model_file)

    # engine wiring -----------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        if self.validator is not None:
            self.attach_validator(self.validator)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._first_batch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception)

    def attach_validator(self, evaluator: Engine) -> None:
        """Save ``checkpoint_best.pt`` (and ``model.pt``) when the validation metric improves."""
        evaluator.add_event_handler(Events.COMPLETED, self._validated)

    def _started(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        if self.resume and self.last_path.exists():
            state = safe_load(self.last_path)
            self.load_state_dict(state, self.last_path)
            self._resume_position(engine, int(state["iteration"]), state["rng"])
            logger.info(f"resumed from {self.last_path} at iteration {engine.state.iteration}")
        elif self.resume:
            logger.info(f"nothing to resume in {self.output_dir}: starting a new run")
        if self.handle_signals:
            self._install_signal_handlers()

    def _resume_position(self, engine: Engine, iteration: int, rng: Mapping) -> None:
        """Put the engine (and the labelled sampler) where the checkpointed run stood.

        ``epoch`` is the number of *completed* epochs, so that a checkpoint written mid-epoch (on a signal)
        continues that epoch: Ignite starts epoch ``epoch + 1`` at its ``iteration % epoch_length``-th batch. The
        labelled sampler skips the batches already used in that epoch, and the RNG states are applied again
        once the first batch is loaded, because creating the data-loader iterator draws a random seed that the
        uninterrupted run did not draw at that point.
        """
        engine.state.iteration = iteration
        length = engine.state.epoch_length
        engine.state.epoch = iteration // length if length else engine.state.epoch
        within = iteration % length if length else 0
        if within:
            loader = getattr(engine, "data_loader", None)
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "skip_next"):
                sampler.skip_next = within * int(getattr(loader, "batch_size", 1) or 1)
            self._pending_rng = rng

    def _first_batch(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of an earlier process killed while saving (their targets are intact)."""
        if not _is_rank0():
            return
        stale = list(self.output_dir.glob(".*.tmp.*"))
        if self.model_file is not None and self.model_file.parent.is_dir():
            stale += list(self.model_file.parent.glob(f".{self.model_file.name}.tmp.*"))
        for path in stale:
            path.unlink(missing_ok=True)
            logger.info(f"removed the temporary file {path} left by an interrupted save")

    def _iteration_completed(self, engine: Engine) -> None:
        it = engine.state.iteration
        length = engine.state.epoch_length
        if self._signal is not None and not (length and it % length == 0):
            self._stop(engine)
            return
        # a signal during an epoch's last iteration: validation and the epoch checkpoint run first
        if self.periodic_interval > 0 and it % self.periodic_interval == 0 and _finite_output(engine.state.output):
            self.save(self.output_dir / f"checkpoint_iter_{it}.pt")

    def _stop(self, engine: Engine) -> None:
        it = engine.state.iteration
        if _finite_output(engine.state.output):
            self.save()
            logger.warning(f"received signal {self._signal}: saved {self.last_path} at iteration {it}, stopping")
        else:  # LossMonitor stops the run with the error; the last checkpoint stays the last good state
            logger.warning(f"received signal {self._signal} at iteration {it} with a non-finite loss: not saved")
        engine.terminate()

    def _epoch_completed(self, engine: Engine) -> None:
        """List this handler after the ValidationHandler so that the saved state knows the best metric."""
        if self._signal is not None:
            self._stop(engine)
        else:
            self.save()

    def _validated(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.metric_name)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.best_metric:
            return
        self.best_metric = float(value)
        self.best_iteration = self.trainer.state.iteration if self.trainer else -1
        self.save(self.best_path)
        self.export_model()

    def _completed(self, engine: Engine) -> None:
        self._restore_signal_handlers()
        if self._signal is not None:  # stopped by a signal: saved already, the run is not finished
            sig, self._signal = self._signal, None
            raise SystemExit(128 + sig)
        self.save()
        if self.best_iteration < 0:  # no validation ran: the last student is the model
            self.export_model()

    def _exception(self, engine: Engine, e: Exception) -> None:
        """Never saves: the state of a failed or interrupted iteration may be half updated (NaN weights, an
        optimizer step without its EMA update); the last checkpoint stays the last good state."""
        self._restore_signal_handlers()
        last = f"{self.last_path} (not overwritten)" if self.last_path.exists() else "none (no checkpoint saved yet)"
        if isinstance(e, NonFiniteLossError):
            logger.error(f"{e}. The last good state is {last}.")
        elif isinstance(e, KeyboardInterrupt):
            logger.warning(f"interrupted at iteration {engine.state.iteration} without saving; last checkpoint: {last}")
        raise e

    def _install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM: finish the iteration, save, stop. A second one stops at once, without saving."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def _handler(signum, frame):
            if self._signal is not None:
                self._restore_signal_handlers()
                raise KeyboardInterrupt(f"second signal {signum}: stopping without saving")
            self._signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, _handler)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}
