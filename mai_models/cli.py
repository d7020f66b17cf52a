"""The ``mai`` command line. User errors print one line (``error: ...``) and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from mai_models.errors import MaiUserError


def _project(args: argparse.Namespace, **kwargs):
    from mai_models.graph import load_project

    return load_project(args.set, **kwargs)


def _run_steps(args: argparse.Namespace, command: str, default: tuple[str, ...] | None = None) -> int:
    """Materialise the steps ``command`` builds (or ``--only`` one), as their DVC stages do."""
    from mai_models.graph import COMMANDS

    project = _project(args)
    chosen = default or COMMANDS[command]
    names = (args.only,) if args.only else tuple(n for n in chosen if n in project.steps)
    for name in names:
        done = project.materialize(
            name, track=not args.no_track, force=args.force, progress=sys.stderr.isatty()
        )
        counts = _headline({**done.result.stats, **(done.extra or {})})
        print(f"{done.result.summary}{': ' + counts if counts else ''} -> {done.result.out_dir}")
    return 0


def _headline(stats: dict) -> str:
    keys = (
        "docs",
        "kept_docs",
        "rejected",
        "quarantined",
        "vocab_size",
        "total_tokens",
        "utterances",
        "minutes",
        "steps",
        "final_train_loss",
        "final_valid_bpb",
        "model_version",
        "wer",
    )
    return ", ".join(f"{k}={stats[k]}" for k in keys if k in stats)


def cmd_steps(command: str) -> Callable[[argparse.Namespace], int]:
    return lambda args: _run_steps(args, command)


def _run_checks(args: argparse.Namespace, names: tuple[str, ...]) -> int:
    project = _project(args)
    failed = 0
    for name in names:
        for check in project.step(name).checks:
            result = project.run_check(name, check.name)
            print(f"{name}: {'passed' if result.passed else 'FAILED'}: {result.description}")
            failed += not result.passed
    return 1 if failed else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mai_models.graph import COMMANDS

    return _run_checks(args, (args.only,) if args.only else COMMANDS["data ingest"])


def cmd_lineage(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mai_models.export.submission import find_bundle, format_lineage, validate_submission

    bundle = find_bundle(Path(args.bundle))
    print(format_lineage(bundle))
    problems = validate_submission(bundle)
    for problem in problems:
        print(f"schema: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mai_models.serve.server import main as serve_main

    return serve_main(args)


def cmd_tts_validate(args: argparse.Namespace) -> int:
    return _run_checks(args, ("speech_corpus",))


def cmd_tts_synthesize(args: argparse.Namespace) -> int:
    from mai_models.tts.commands import synthesize

    return synthesize(args)


def cmd_tts_export(args: argparse.Namespace) -> int:
    from mai_models.tts.commands import export

    return export(args)


def cmd_bench(args: argparse.Namespace) -> int:
    # Each benchmark has its own default number of timed repeats; --repeats overrides it.
    repeats = {} if args.repeats is None else {"repeats": args.repeats}
    if args.name == "tokenize":
        from mai_models.bench.tokenize import run as run_tokenize_bench

        project = _project(args)
        for name in ("raw_documents", "clean_documents", "bpe_tokenizer"):
            project.run(name)
        result = run_tokenize_bench(
            project.out_dir("clean_documents"),
            project.out_dir("bpe_tokenizer"),
            workers=args.workers,
            **repeats,
        )
    elif args.name == "moe-train":
        from mai_models.bench.moe_train import run as run_moe_bench
        from mai_models.config import apply_overrides

        steps = {} if args.repeats is None else {"steps": args.repeats}
        result = run_moe_bench(
            preset=args.preset,
            threads=args.threads,
            model_overrides=apply_overrides({}, args.set),
            device=args.device,
            compare_dense=args.compare_dense,
            **steps,
        )
    elif args.name == "tts-rtf":
        from mai_models.bench.tts_rtf import run as run_tts_bench

        result = run_tts_bench(bundle=args.bundle, seconds=args.seconds, threads=args.threads, **repeats)
    elif args.name == "serve":
        from pathlib import Path

        from mai_models.bench.serve import run as run_serve_bench
        from mai_models.settings import load_settings

        model_dir = Path(args.model_dir) if args.model_dir else load_settings().data_dir / "hf_export"
        result = run_serve_bench(model_dir, threads=args.threads, **repeats)
    elif args.name == "arena":
        from mai_models.bench.arena import run as run_arena_bench

        result = run_arena_bench(**repeats)
    elif args.name == "retrain":
        from mai_models.bench.retrain import run as run_retrain_bench

        result = run_retrain_bench(**repeats)
    elif args.name == "parallel":
        from mai_models.bench.parallel import run as run_parallel_bench

        result = run_parallel_bench(_project(args))
    elif args.name == "demo-quality":
        from mai_models.bench.demo_quality import run as run_demo_quality

        result = run_demo_quality()
    else:
        raise MaiUserError(
            f"unknown benchmark '{args.name}' "
            "(available: tokenize, moe-train, tts-rtf, arena, serve, retrain, demo-quality, parallel)"
        )
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_lm_train(args: argparse.Namespace) -> int:
    # Without --only, `mai lm train` trains the MoE; --dense is the dense twin's short name.
    default = ("dense_pretrain",) if args.dense else ("moe_pretrain",)
    return _run_steps(args, "lm train", default=default)


def cmd_lm_plan(args: argparse.Namespace) -> int:
    from mai_models.lm.presets import PRESETS
    from mai_models.lm.sizing import parallel_plan

    if args.preset not in PRESETS:
        raise MaiUserError(f"unknown preset '{args.preset}' (available: {', '.join(PRESETS)})")
    preset = PRESETS[args.preset]
    train = preset.train
    world = args.world_size or preset.world_size
    print(
        parallel_plan(
            preset.model, preset.parallel, world, train.micro_batch_size, global_batch=train.global_batch_size
        )
    )
    if args.launch:
        from mai_models.lm.plan_launch import launch_tiny

        graph = _project(args)
        ctx = graph.context("moe_pretrain")
        shards, tokenizer = ctx.input("token_shards"), ctx.input("bpe_tokenizer")
        steps, most = args.steps, args.max_processes
        result = launch_tiny(preset.parallel, graph.settings, shards, tokenizer, most, steps)
        print(
            f"tiny launch       {result['layout']} on {result['processes']} CPU processes: "
            f"train loss {' -> '.join(f'{x:.3f}' for x in result['train_loss'])}"
        )
        print(json.dumps(result, sort_keys=True))
    return 0


def cmd_lm_k8s(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mai_models.lm.k8s_manifests import cluster_from_args, write_manifests

    for path in write_manifests(_project(args).params.lm, cluster_from_args(args), Path(args.output)):
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from mai_models.demo_report import print_demo_report, read_demo_record, record_path
    from mai_models.launcher import measure_cpu_peak, run_demo

    started = time.time()
    # Before the parallel steps start: the CPU peak for MFU can only be timed on idle cores.
    print(f"CPU peak for MFU: {measure_cpu_peak()}", flush=True)
    code = run_demo(started)
    project = _project(args)
    record = read_demo_record(project.settings)
    if record is None or record_path(project.settings).stat().st_mtime < started:
        print("the demo recorded no report; what is stored now:")
        return cmd_status(args) or code
    print_demo_report(project.settings, list(project.steps), record)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from mai_models.demo_report import print_status
    from mai_models.step_status import freshness

    project = _project(args)
    print_status(project.settings, freshness(project))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from mai_models.launcher import start_ui

    return start_ui(args.dagster_port, args.mlflow_port)


def cmd_dvc(args: argparse.Namespace) -> int:
    from mai_models.settings import load_settings
    from mai_models.tracking.dvc import Dvc

    dvc = Dvc(load_settings())
    dvc.ensure_remote()
    return dvc.run(*args.dvc_args, check=False, capture=False).returncode


def cmd_graph(args: argparse.Namespace) -> int:
    from mai_models.executor.dvc_stages import render

    project = _project(args)
    if args.graph_command == "dvc-yaml":
        path = project.settings.root / "dvc.yaml"
        text = render(project)
        if args.check:
            if not path.exists() or path.read_text() != text:
                raise MaiUserError(f"{path} does not match the step graph: run `mai graph dvc-yaml`")
            print(f"{path} matches the step graph")
            return 0
        path.write_text(text)
        print(f"wrote {path} ({len(project.steps)} stages)")
        return 0
    for name, step in project.steps.items():
        upstream = ", ".join(project.upstream(name)) or "-"
        print(f"{name:20s} {step.group:11s} mai {step.command:13s} <- {upstream}")
    return 0


def _add_step_args(parser: argparse.ArgumentParser, steps: tuple[str, ...]) -> None:
    parser.add_argument("--only", choices=steps, help="run one step (as its DVC stage does)")
    parser.add_argument(
        "-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the stored version is current")
    parser.add_argument("--no-track", action="store_true", help="do not log an MLflow run")


def build_parser() -> argparse.ArgumentParser:
    from mai_models.graph import COMMANDS

    parser = argparse.ArgumentParser(prog="mai", description="MAI Foundry: build, evaluate and ship models.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="text data plane").add_subparsers(dest="data_command", required=True)
    ingest = data.add_parser("ingest", help="read, clean, dedup and split the corpus")
    _add_step_args(ingest, COMMANDS["data ingest"])
    ingest.set_defaults(func=cmd_steps("data ingest"))
    validate = data.add_parser("validate", help="run the great-expectations suites on raw and clean data")
    validate.add_argument("--only", choices=COMMANDS["data ingest"])
    validate.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=cmd_validate)
    tokenize = data.add_parser("tokenize", help="train the BPE tokenizer and write Megatron shards")
    _add_step_args(tokenize, COMMANDS["data tokenize"])
    tokenize.set_defaults(func=cmd_steps("data tokenize"))

    lm = sub.add_parser("lm", help="MoE language model").add_subparsers(dest="lm_command", required=True)
    lm_train = lm.add_parser("train", help="pretrain with torchrun (the lm section of params.yaml)")
    _add_step_args(lm_train, COMMANDS["lm train"])
    lm_train.add_argument(
        "--dense", action="store_true", help="the dense baseline: MoE layers off, same active parameters"
    )
    lm_train.set_defaults(func=cmd_lm_train)
    lm_plan = lm.add_parser("plan", help="validate a preset's parallel layout and print its plan")
    lm_plan.add_argument("--preset", default="mai-1-like")
    lm_plan.add_argument("--world-size", type=int, default=None)
    lm_plan.add_argument(
        "--launch", action="store_true", help="also train the layout's shape, divided down, on the tiny model"
    )
    lm_plan.add_argument("--max-processes", type=int, default=8, help="--launch: CPU processes at most")
    lm_plan.add_argument("--steps", type=int, default=3, help="--launch: training steps")
    lm_plan.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    lm_plan.set_defaults(func=cmd_lm_plan)
    from mai_models.lm.k8s_manifests import add_arguments as add_k8s_arguments

    lm_k8s = lm.add_parser("k8s", help="render the pretraining PyTorchJob and the Dagster K8s run launcher")
    add_k8s_arguments(lm_k8s)
    lm_k8s.set_defaults(func=cmd_lm_k8s)

    bench = sub.add_parser("bench", help="benchmarks; each prints one final JSON line")
    bench.add_argument(
        "name", help="tokenize | moe-train | tts-rtf | arena | serve | retrain | demo-quality | parallel"
    )
    bench.add_argument("--model-dir", default=None, help="serve: HF model dir (default data/hf_export)")
    bench.add_argument("--workers", type=int, default=2, help="tokenize: encoder processes")
    bench.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per side (moe-train: steps); default per benchmark: arena 3, tokenize 5, "
        "moe-train 5, tts-rtf 5, serve 3, retrain 1",
    )
    bench.add_argument(
        "--preset",
        default="tiny",
        help="moe-train: model preset (demo routes top-1 + shared expert, which Mixtral cannot express)",
    )
    bench.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="moe-train: where to train"
    )
    bench.add_argument("--compare-dense", action="store_true", help="moe-train: also the dense twin")
    bench.add_argument(
        "--threads", type=int, default=2, help="moe-train, serve: torch threads; tts-rtf: also timed at 1"
    )
    bench.add_argument("--bundle", default=None, help="tts-rtf: voice bundle (default data/mai_voice/bundle)")
    bench.add_argument("--seconds", type=float, default=60.0, help="tts-rtf: seconds of speech to make")
    bench.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tokenize: params.yaml overrides; moe-train: model config fields (e.g. moe_z_loss_coeff=1e-3)",
    )
    bench.set_defaults(func=cmd_bench)

    tts = sub.add_parser("tts", help="speech: data, training, synthesis, export").add_subparsers(
        dest="tts_command", required=True
    )
    build = tts.add_parser("build", help="speech data, features, training and the mai-voice release")
    _add_step_args(build, COMMANDS["tts build"])
    build.set_defaults(func=cmd_steps("tts build"))
    tts_validate = tts.add_parser("validate", help="run the great-expectations suite on the speech corpus")
    tts_validate.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    tts_validate.set_defaults(func=cmd_tts_validate)
    synth = tts.add_parser("synthesize", help="text to .wav with the trained voice")
    synth.add_argument("text", nargs="?", help="what to say (or --file)")
    synth.add_argument("-o", "--output", default="out.wav", help="output .wav (single text)")
    synth.add_argument("--file", help="batch mode: one utterance per line")
    synth.add_argument("--out-dir", default="tts_out", help="batch mode: where the .wav files go")
    synth.add_argument("--speed", type=float, default=1.0, help="speaking rate: 1.2 is 20%% faster")
    synth.add_argument("--stream", action="store_true", help="chunked vocoding; reports time to first audio")
    synth.add_argument("--bundle", help="ONNX voice bundle (default data/mai_voice/bundle)")
    synth.add_argument("--torch", action="store_true", help="use the torch weights instead of the bundle")
    synth.add_argument("--threads", type=int, default=2)
    synth.set_defaults(func=cmd_tts_synthesize)
    export = tts.add_parser("export", help="export the trained voice as an ONNX bundle and verify it")
    export.add_argument("-o", "--output", default="voice_bundle", help="bundle directory")
    export.set_defaults(func=cmd_tts_export)

    evaluation = sub.add_parser("eval", help="evaluation, arena and submission").add_subparsers(
        dest="eval_command", required=True
    )
    eval_build = evaluation.add_parser("build", help="HF export, evaluation, arena + gate, submission bundle")
    _add_step_args(eval_build, COMMANDS["eval build"])
    eval_build.set_defaults(func=cmd_steps("eval build"))
    lineage = sub.add_parser("lineage", help="the chain from a submission bundle back to the raw data")
    lineage.add_argument("bundle", help="a bundle directory (or data/arena_submission)")
    lineage.set_defaults(func=cmd_lineage)
    from mai_models.serve.server import add_arguments as add_serve_arguments

    serve = sub.add_parser("serve", help="OpenAI-compatible server for the LM and the voice (127.0.0.1)")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="materialise every asset through Dagster on the embedded defaults")
    demo.set_defaults(func=cmd_demo, set=[])
    status = sub.add_parser("status", help="each step: current, stale (and why) or missing; champion, gate")
    status.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    status.set_defaults(func=cmd_status)
    ui = sub.add_parser("ui", help="serve the Dagster and MLflow UIs on 127.0.0.1")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    graph = sub.add_parser("graph", help="the step graph: every step, its plane, command and upstream")
    graph.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    graph_sub = graph.add_subparsers(dest="graph_command")
    dvc_yaml = graph_sub.add_parser("dvc-yaml", help="write dvc.yaml from the step graph")
    dvc_yaml.add_argument("--check", action="store_true", help="only check that dvc.yaml is current")
    graph.set_defaults(func=cmd_graph)
    dvc = sub.add_parser(
        "dvc", help="run DVC from its tool environment, e.g. `mai dvc exp run -S clean.min_chars=100`"
    )
    dvc.add_argument("dvc_args", nargs=argparse.REMAINDER)
    dvc.set_defaults(func=cmd_dvc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MaiUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
