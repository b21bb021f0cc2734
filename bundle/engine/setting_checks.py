"""Checks of a run's settings before anything starts: unknown ids, wrong types and values.

``python -m monai.bundle run`` silently adds any ``--name value`` it is given as a new config id, so a mistyped
``--num_iteration 5`` trains the default schedule and ``--modalty mr`` keeps CT scaling; its command line also
passes ``true``/``false`` as text, which Python reads as true. :func:`check_command_line` (the first step of
``initialize`` in ``train.json`` and ``inference.json``) re-reads the command line and the merged config files
and stops the run, in one message, at:

- a command-line override or an override file (a preset, your own file) that names an id the configs do not
  define, with the closest known ids;
- a setting of the wrong type or value (:data:`SPECS`), naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.engine.allocator import CPU_ALLOCATORS
from bundle.engine.errors import DataValidationError
from bundle.engine.precision import CPU_PRECISIONS

__all__ = ["SettingsError", "check_command_line", "check_settings", "config_ids", "SPECS"]

# arguments of ``monai.bundle run`` itself (not config ids)
RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
    | {"workflow_name", "workflow_type"}
)
# config files of the bundle that may add ids when merged over another; any other file only overrides
BASE_CONFIGS = frozenset(
    {"train.json", "inference.json", "evaluate.json", "multi_gpu_train.json", "multi_gpu_evaluate.json"}
)


class SettingsError(DataValidationError):
    """A setting the configs do not define, or a setting of the wrong type or value."""


# -- value checks -------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    lo_txt = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
    hi_txt = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
    text = (
        "a number"
        + (f" {lo_txt}" if lo_txt else "")
        + (" and" if lo_txt and hi_txt else "")
        + (f" {hi_txt}" if hi_txt else "")
    )

    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return False
        return hi is None or (v < hi or (not hi_open and v == hi))

    return ok, text


def _number_or_triple(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """One number, or a list of three (one per spatial axis), each within the bounds."""
    one, text = _number(lo, hi, lo_open, hi_open)
    triple, _ = _triple(one, "")
    return (lambda v: one(v) or triple(v)), f"{text}, or a list of three such numbers (one per axis)"


def _integer(lo: int):
    return (lambda v: _is_int(v) and v >= lo), f"a whole number >= {lo}"


def _choice(*options: str):
    return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


_BOOL = ((lambda v: isinstance(v, bool)), "True or False (on the command line: True, False, 1 or 0)")


def _triple(check: Callable[[Any], bool], what: str, none_ok: bool = False):
    def ok(v: Any) -> bool:
        if v is None:
            return none_ok
        return isinstance(v, (list, tuple)) and len(v) == 3 and all(check(x) for x in v)

    return ok, f"a list of three {what}" + (", or None" if none_ok else "")


SPECS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": _number(0, lo_open=True),
    "momentum": _number(0, 1),
    "weight_decay": _number(0),
    "ema_decay": _number(0, 1),
    "average_decay": _number(0, 1, hi_open=True),
    "lr_power": _number(0),
    "num_iterations": _integer(1),
    "val_interval": _integer(1),
    "print_interval": _integer(1),
    "checkpoint_interval": _integer(0),
    "labeled_batch_size": _integer(1),
    "unlabeled_batch_size": _integer(1),
    "n_copies": _integer(1),
    "n_filters": _integer(1),
    "num_classes": _integer(2),
    "in_channels": _integer(1),
    "num_workers": _integer(0),
    "bn_reestimate_batches": _integer(0),
    "sw_batch_size": _integer(1),
    "sw_keep": _integer(1),
    "seed": _integer(0),
    "patch_size": _triple(lambda x: _is_int(x) and x > 0 and x % 16 == 0, "positive whole numbers divisible by 16"),
    "sw_roi_size": _triple(lambda x: _is_int(x) and x > 0 and x % 16 == 0, "positive whole numbers divisible by 16"),
    "sw_lattice_stride": _triple(lambda x: _is_int(x) and x > 0, "positive whole numbers (voxels)"),
    "sw_stride": _triple(lambda x: _is_int(x) and x > 0, "positive whole numbers (voxels)"),
    "spacing": _triple(lambda x: _is_number(x) and x > 0, "positive numbers (mm)", none_ok=True),
    "ct_window": ((lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)) and v[0] < v[1]),
                  "a list [low, high] of Hounsfield units with low < high"),  # fmt: skip
    "modality": _choice("ct", "mr", "flair", "none"),
    "sw_mode": _choice("constant", "gaussian"),
    "semi_warmup": _choice("none", "rampup", "confidence"),
    "deploy_model": _choice("student", "best_of_both"),
    "amp_dtype": _choice("bfloat16", "float16"),
    "cpu_precision": _choice(*CPU_PRECISIONS),
    "cpu_allocator": _choice(*CPU_ALLOCATORS),
    "sw_overlap": _number_or_triple(0, 1, hi_open=True),
    "sw_sigma_scale": _number_or_triple(0, lo_open=True),
    "sw_average": _choice("logits", "probabilities"),
    "sw_window_flips": (
        (lambda v: isinstance(v, (list, tuple)) and all(
            isinstance(a, (list, tuple)) and len(set(a)) == len(a) and all(_is_int(x) and 0 <= x <= 2 for x in a)
            for a in v)),
        "a list of lists of spatial axes 0-2, e.g. [[], [0, 1, 2]] (window n is seen flipped along entry n mod len)",
    ),
    "cache_rate": _number(0, 1),
    "consistency_weight": _number(0),
    "sharpen_temperature": _number(0, lo_open=True),
    "noise_std": _number(0),
    "noise_clip": _number(0),
    "mix_alpha": _number(0, lo_open=True),
    "rand_flip_prob": _number(0, 1),
    "rand_rotate90_prob": _number(0, 1),
    "foreground_threshold": _number(),
    "output_postfix": ((lambda v: isinstance(v, str)), "text (may be empty)"),
    **{
        name: _BOOL
        for name in (
            "amp", "amp_cpu", "channels_last", "use_unlabeled", "noise_labeled", "use_mix", "use_semi",
            "use_consistency", "use_sharpening", "resume", "crop_foreground", "validate_teacher", "average_model", "tta",
            "keep_largest_cc", "semi_on_clean", "save_masks", "invert_to_input", "compile",
        )
    },
}  # fmt: skip


def check_settings(values: Mapping[str, Any], where: Mapping[str, str] | None = None) -> list[str]:
    """One line per setting of ``values`` whose value :data:`SPECS` does not allow (expressions ``"$..."`` and
    references ``"@..."`` are not checked here); ``where`` names the origin of a value (e.g. the command line)."""
    problems = []
    for name, value in values.items():
        if name not in SPECS or (isinstance(value, str) and value[:1] in ("$", "@", "%")):
            continue
        ok, allowed = SPECS[name]
        if not ok(value):
            origin = f" ({where[name]})" if where and name in where else ""
            problems.append(f"{name} = {value!r}{origin}: must be {allowed}.")
    return problems


# -- ids --------------------------------------------------------------------------------------------
def config_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config: top-level keys and nested ``a#b#0`` paths."""
    items = config.items() if isinstance(config, Mapping) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        key = str(key).lstrip("+") if not prefix else str(key)
        path = f"{prefix}#{key}" if prefix else key
        yield path
        yield from config_ids(value, path)


def _closest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _defined(name: str, ids: set[str], config: Mapping[str, Any]) -> bool:
    """``name`` is an id of the config, a ``_disabled_``-style key of an existing id, or a new argument of an
    existing component (a dict with ``_target_``, e.g. ``augmentation#2#max_k``)."""
    if name in ids:
        return True
    parent, _, last = name.rpartition("#")
    if not parent or parent not in ids:
        return False
    if last.startswith("_") and last.endswith("_"):
        return True
    node: Any = config
    for part in parent.split("#"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return isinstance(node, Mapping) and "_target_" in node


def _parse_value(text: str) -> Any:
    """A command-line value as ``monai.bundle run`` (Python Fire) reads it."""
    try:
        from fire.parser import DefaultParseValue

        return DefaultParseValue(text)
    except ImportError:  # pragma: no cover - fire is a dependency
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text


def parse_run_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]] | None:
    """``(config files, {override id: value})`` of a ``python -m monai.bundle run ...`` command line, or ``None``
    when ``argv`` is not one (a test runner, a programmatic ``ConfigWorkflow``)."""
    argv = list(argv)
    if not argv or Path(argv[0]).name != "__main__.py" or "bundle" not in Path(argv[0]).parts or "run" not in argv:
        return None
    args: dict[str, Any] = {}
    tokens = argv[argv.index("run") + 1 :]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            if "=" in tok:
                key, value = tok[2:].split("=", 1)
                i += 1
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                key, value = tok[2:], tokens[i + 1]
                i += 2
            else:
                key, value = tok[2:], "True"
                i += 1
            args[key.replace("-", "_") if key in {"config-file", "meta-file"} else key] = _parse_value(value)
        else:
            i += 1
    if "args_file" in args and Path(str(args["args_file"])).is_file():
        from monai.bundle import ConfigParser

        from_file = ConfigParser.load_config_file(str(args["args_file"]))
        args = {**from_file, **args}
    files = args.pop("config_file", None)
    if isinstance(files, str):
        try:
            files = ast.literal_eval(files)
        except (ValueError, SyntaxError):
            files = files.split(",")
    files = [str(f) for f in (files if isinstance(files, (list, tuple)) else [files] if files else [])]
    return files, {k: v for k, v in args.items() if k not in RUN_ARGUMENTS}


def command_line_problems(files: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """Unknown ids (in override files and on the command line) and bad values, as message lines."""
    from monai.bundle import ConfigParser

    problems: list[str] = []
    merged: dict[str, Any] = {}
    for f in files:
        content = ConfigParser.load_config_file(f)
        if merged and Path(f).name not in BASE_CONFIGS:  # an override file: only ids the configs define
            ids = set(config_ids(merged))
            for key in content:
                if not key.startswith("+") and not _defined(key, ids, merged):
                    problems.append(
                        f"{f}: '{key}' is not a setting of {Path(files[0]).name}{_closest(key, sorted(ids))}"
                    )
        merged = ConfigParser.load_config_files(list(files[: files.index(f) + 1]))
    ids = set(config_ids(merged))
    for key in overrides:
        if not _defined(key, ids, merged):
            problems.append(
                f"--{key}: not a setting of {', '.join(Path(f).name for f in files)}{_closest(key, sorted(ids))}"
            )
    values = {k: v for k, v in merged.items() if not isinstance(v, (dict, list)) or k in SPECS}
    values.update(overrides)
    problems += check_settings(values, where=dict.fromkeys(overrides, "command line"))
    return problems


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Stop a ``monai.bundle run`` command whose settings are unknown or invalid, before anything is read.

    Does nothing when the process is not such a command. Set ``PLGDF_SKIP_SETTINGS_CHECK=1`` to skip the check.

    Raises:
        SettingsError: one line per problem.
    """
    if os.environ.get("PLGDF_SKIP_SETTINGS_CHECK"):
        return
    parsed = parse_run_argv(sys.argv if argv is None else argv)
    if parsed is None or not parsed[0]:
        return
    files, overrides = parsed
    problems = command_line_problems(files, overrides)
    if problems:
        raise SettingsError(f"{len(problems)} setting problem(s), nothing was run:\n  " + "\n  ".join(problems))
