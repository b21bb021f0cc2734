"""LA-lite benchmark: semi-supervised gain on real LA data at 1.25 mm, on a CPU (see docs/results.md).

    python -m scripts.la_lite prepare                    # data lists from configs/la_lite_split.json
    python -m scripts.la_lite train --arm plgdf-8        # one arm: supervised-8, plgdf-8, supervised-72, mean-teacher-8
    python -m scripts.la_lite evaluate --arm plgdf-8     # last + best-on-validation checkpoints, validation cases
    python -m scripts.la_lite report                     # table, JSON, learning curves
    python -m scripts.la_lite windows                    # sliding-window settings: Dice and s/volume vs the paper's
    python -m scripts.la_lite all                        # all of the above; arms in sequence (default: the three)

The campaign (labelled budget and seed first-class; see docs/results.md):

    python -m scripts.la_lite run --arm-name plgdf --labels 4 --seed 0   # train + evaluate one run
    python -m scripts.la_lite campaign                   # the 15 runs in order, resumable, figures per run
    python -m scripts.la_lite campaign --plan plgdf-4:0 --plan supervised-4:0 --commit-repo .
    python -m scripts.la_lite summary                    # statistics, tables, curves from the per-run figures
    python -m scripts.la_lite window-summary             # inference default vs paper stride, every checkpoint
    python -m scripts.la_lite crop-fg --labels 4         # true foreground fraction of random crops, per part
    python -m scripts.la_lite screen-summary --results-dir docs/results/plgdf_plus_screen   # PLGDF+ screen table
    python -m scripts.la_lite screen-summary --results-dir docs/results/plgdf_plus_screen --all-seeds  # paired seeds
    python -m scripts.la_lite average-summary --results-dir docs/results/plgdf_plus_average  # average_model, in-run

A campaign run lives in <run-root>/labels<N>/<arm>/seed<k>; after it ends its figures go to
<results-dir>/la_lite_runs/<arm>-<N>_seed<k>.json (default results dir docs/results), the summary
(la_lite_summary.json, la_lite_campaign.md, la_lite_curves_<N>labels.png) is rebuilt, and with --commit-repo
those files are committed there. An interrupted run resumes from its checkpoint_last.pt; finished runs are skipped.

--la-dir defaults to ../shared/data/LA. Score the trained checkpoints on any other folder + list of LA h5 cases
(same 1.25 mm resampling)::

    python -m scripts.la_lite evaluate --la-dir /data/LA_test --la-list /data/LA_test/test.list --name test
    python -m scripts.la_lite report --name test

The paper's exact-stride protocol (18x18x4 at 0.625 mm = 9x9x2 at 1.25 mm) instead of the bundle default::

    python -m scripts.la_lite evaluate --arm plgdf-8 --protocol paper

Outputs go to --run-root (default runs/la_lite): <arm>/log.jsonl, checkpoints, wall.json,
eval_<name>_<last|best>[_paper]/; the report writes la_lite_<name>.json, la_lite_<name>.md and la_lite_curves.png
into --report-dir (default <run-root>/report). Extra arguments after -- go to every training command (e.g.
-- --num_iterations 200); give the same ones to evaluate when they change the network (--n_filters).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import campaign, la_lite


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "step",
        choices=[
            "prepare",
            "train",
            "evaluate",
            "report",
            "windows",
            "all",
            "run",
            "campaign",
            "summary",
            "bn-screen",
            "window-summary",
            "crop-fg",
            "screen-summary",
            "average-summary",
        ],
    )
    parser.add_argument("--la-dir", default="../shared/data/LA", help="LA folder (default ../shared/data/LA)")
    parser.add_argument("--run-root", default="runs/la_lite", help="outputs (default runs/la_lite)")
    parser.add_argument("--arm", action="append", choices=list(la_lite.ARMS), help="repeatable; default all three")
    parser.add_argument(
        "--split", default=str(la_lite.SPLIT_FILE), help="split file (default configs/la_lite_split.json)"
    )
    parser.add_argument("--la-list", help="evaluate: list of case IDs (default: the split's validation cases)")
    parser.add_argument("--name", default="validation", help="evaluate/report: name of the evaluated set")
    parser.add_argument("--report-dir", help="report: output folder (default <run-root>/report)")
    parser.add_argument("--figures", action="store_true", help="evaluate: also write per-case PNGs")
    parser.add_argument(
        "--protocol",
        choices=["monai", "paper"],
        default="monai",
        help="evaluate: bundle default sliding window (default) or the paper's exact stride",
    )
    parser.add_argument(
        "--stride",
        type=int,
        nargs=3,
        default=[9, 9, 2],
        help="paper protocol stride (default 9 9 2: 18x18x4 at 1.25 mm)",
    )
    parser.add_argument("--resume", action="store_true", help="train: continue an interrupted arm")
    parser.add_argument(
        "--checkpoint", choices=["last", "best"], default="last", help="windows: which checkpoint (default last)"
    )
    parser.add_argument("--arm-name", choices=list(campaign.METHODS), help="run: the arm (method)")
    parser.add_argument(
        "--labels", type=int, choices=[4, 8, 16, 72], help="run, crop-fg, screen-summary (default 4): labelled budget"
    )
    parser.add_argument("--seed", type=int, default=0, help="run, crop-fg, screen-summary: seed (default 0)")
    parser.add_argument(
        "--all-seeds", action="store_true", help="screen-summary: pair every seed an arm shares with the reference"
    )
    parser.add_argument("--plan", action="append", help="campaign: run spec <arm>-<labels>:<seed>, repeatable")
    parser.add_argument("--results-dir", default="docs/results", help="run/campaign/summary: figures folder")
    parser.add_argument("--commit-repo", help="campaign: commit each run's figures in this git checkout")
    parser.add_argument("--repeats", type=int, default=1, help="window-summary: timed runs per case (median)")
    parser.add_argument("--no-full", action="store_true", help="window-summary: skip the full-resolution timing")
    args = parser.parse_args(argv)
    arms = args.arm or list(la_lite.DEFAULT_ARMS)
    try:
        if args.step in ("run", "campaign"):
            if args.step == "run":
                if not args.arm_name or not args.labels:
                    raise ValueError("run needs --arm-name and --labels (and optionally --seed).")
                plan = [f"{args.arm_name}-{args.labels}:{args.seed}"]
            else:
                plan = args.plan or list(campaign.DEFAULT_PLAN)
            run_root = args.run_root if args.run_root != "runs/la_lite" else "runs/la_lite_campaign"
            done = campaign.run_campaign(
                plan, run_root, args.la_dir, args.results_dir, extra, args.split, args.commit_repo
            )
            print(f"[campaign] finished {len(done)} run(s): {', '.join(done) or 'none (all had figures)'}")
            return 0
        if args.step == "bn-screen":
            from benchmarks.bn_screen import record_screen, screen_bn

            run_root = args.run_root if args.run_root != "runs/la_lite" else "runs/la_lite_campaign"
            for spec in args.plan or []:
                result = screen_bn(
                    campaign.Run.parse(spec), run_root, args.la_dir, overrides=la_lite.parse_overrides(extra)
                )
                print(f"[bn-screen] {spec}: {json.dumps(result)}", flush=True)
                print(f"[bn-screen] recorded in {record_screen(args.results_dir, spec, 'bn_reestimation', result)}")
            return 0
        if args.step == "window-summary":
            from benchmarks.window_campaign import window_summary

            run_root = args.run_root if args.run_root != "runs/la_lite" else "runs/la_lite_campaign"
            overrides = {
                "spacing": [0.625 / la_lite.RESAMPLE_FACTOR] * 3,
                "bundle_root": str(la_lite.ROOT),
                **la_lite.parse_overrides(extra),
            }
            entries = la_lite.la_entries(args.la_dir, args.la_list or Path(run_root) / "data" / "validation.list")
            configs = [str(la_lite.ROOT / "configs" / "inference.json"), str(la_lite.ROOT / la_lite.PRESET)]
            out = window_summary(
                run_root,
                entries,
                Path(args.results_dir) / "window_summary.json",
                overrides,
                configs,
                repeats=args.repeats,
                full=not args.no_full,
                command="python -m scripts.la_lite " + " ".join(argv),
            )
            print(json.dumps(out["targets"]), flush=True)
            return 0
        if args.step == "crop-fg":
            from benchmarks.crop_foreground import crop_foreground

            if not args.labels:
                raise ValueError("crop-fg needs --labels (the budget whose data list is read).")
            run_root = args.run_root if args.run_root != "runs/la_lite" else "runs/la_lite_campaign"
            result = crop_foreground(Path(run_root) / "data" / f"datalist_{args.labels}.json", seed=args.seed)
            result["command"] = "python -m scripts.la_lite " + " ".join(argv)
            path = Path(args.results_dir) / "la_lite_crop_foreground.json"
            recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            recorded[str(args.labels)] = result
            path.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
            print(json.dumps(result["parts"], indent=2))
            print(f"[crop-fg] recorded in {path}")
            return 0
        if args.step == "screen-summary":
            from benchmarks.campaign_report import screen_markdown, screen_summary

            seed = None if args.all_seeds else args.seed
            screen = screen_summary(args.results_dir, labels=args.labels or 4, seed=seed)
            print(screen_markdown(screen))
            return 0
        if args.step == "average-summary":
            from benchmarks.campaign_report import average_markdown, average_summary

            print(average_markdown(average_summary(args.results_dir, labels=args.labels or 4)))
            return 0
        if args.step == "summary":
            out = campaign.summarize(args.results_dir)
            print(campaign.markdown(out, campaign.load_figures(args.results_dir)))
            return 0
        if args.step in ("prepare", "all"):
            written = la_lite.prepare(args.la_dir, args.run_root, args.split)
            print("[la-lite] wrote " + ", ".join(str(p) for p in written.values()), flush=True)
        if args.step in ("train", "all"):
            for arm in arms:
                rec = la_lite.run_arm(arm, args.run_root, extra, resume=args.resume)
                print(f"[la-lite] {arm}: finished in {rec['wall_seconds'] / 60:.1f} min", flush=True)
        if args.step in ("evaluate", "all"):
            for arm in arms:
                out = la_lite.evaluate_arm(
                    arm,
                    args.run_root,
                    args.la_dir,
                    args.la_list,
                    args.name,
                    args.figures,
                    args.protocol,
                    args.stride if args.protocol == "paper" else None,
                    extra,
                )
                for which, summary in out.items():
                    dice = summary["metrics"]["dice"]
                    print(f"[la-lite] {arm} {which}: Dice {dice['mean']:.4f} +- {dice['std']:.4f}", flush=True)
        if args.step in ("report", "all"):
            report_dir = args.report_dir or str(Path(args.run_root) / "report")
            results = la_lite.report(args.run_root, arms, report_dir, args.name)
            print(la_lite.markdown_table(results))
            print(f"[la-lite] report in {report_dir}", flush=True)
        if args.step == "windows":
            report_dir = args.report_dir or str(Path(args.run_root) / "report")
            results = la_lite.window_study(
                args.run_root, arms, args.la_dir, report_dir, args.la_list, args.name, args.checkpoint, overrides=extra
            )
            from benchmarks.window_study import markdown

            print(markdown(results))
            print(f"[la-lite] window study in {report_dir}", flush=True)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
