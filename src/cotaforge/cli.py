"""cotaforge's command line. Every command runs the same Prefect flows (or library functions) as the API.

Exit status: 0 when the run completed (rejected rows are counted, not fatal); 2 with a message when it
could not run (bad config, unreadable manifest, missing inputs).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cotaforge.config import RunConfig, load_config
from cotaforge.errors import CotaforgeError
from cotaforge.models import StageReport

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Make staged chain-of-thought QA corpora from labeled audio.")
schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schemas of cotaforge's records.")
app.add_typer(schemas_app, name="schemas")
review_app = typer.Typer(no_args_is_help=True,
                         help="Review samples in the browser; `cotaforge publish` applies the decisions.")
app.add_typer(review_app, name="review")
console = Console(stderr=True)

ConfigArg = Annotated[Optional[Path], typer.Argument(help="run config YAML; optional when --manifest is given")]
ManifestOpt = Annotated[Optional[list[Path]], typer.Option("--manifest", "-m", help="CSV/JSONL/Parquet manifest or label folder; repeatable")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="output root (runs/ and datasets/ go here)")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="run name (default: the manifests' folder names)")]
GroupOpt = Annotated[Optional[str], typer.Option("--group-by", help="manifest column that groups rows for splitting")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override any config key: section.key=value")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="seed of every random choice")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="clips per batch")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="batches processed at once")]
VersionOpt = Annotated[Optional[str], typer.Option("--version", help="dataset version to publish")]
PushOpt = Annotated[Optional[str], typer.Option("--push-to-hub", help="also upload the dataset to this Hub repo")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")]
TeacherOpt = Annotated[Optional[str], typer.Option("--teacher", help="teacher backend: template, openai or vllm")]
BaseUrlOpt = Annotated[Optional[list[str]], typer.Option(
    "--base-url", help="OpenAI-compatible endpoint, e.g. http://gpu1:8000/v1; repeatable (requests spread across them)")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="teacher model, as the server names it")]


def _prepare_prefect(verbose: bool) -> None:
    """Prefect settings for a local, offline run; the user's own environment wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Batches already run in parallel; numeric libraries spinning up threads of their own only contend.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    # Flows live in the source checkout's flows/ package beside src/ (installed with the wheel too).
    root = Path(__file__).resolve().parents[2]
    if (root / "flows").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))


def _build_config(config: Path | None, manifest: list[Path] | None, out: Path | None, name: str | None,
                  group_by: str | None, overrides: list[str] | None, seed: int | None = None,
                  batch_size: int | None = None, workers: int | None = None, version: str | None = None,
                  push_to_hub: str | None = None, teacher: str | None = None, base_url: list[str] | None = None,
                  model: str | None = None) -> RunConfig:
    if config is None and not manifest:
        raise CotaforgeError("give a config file or at least one --manifest (see `cotaforge run --help`)")
    cfg = load_config(config, overrides, inputs__manifests=[m.resolve() for m in manifest or []],
                      run__out_dir=out, run__name=name, inputs__group_by=group_by, run__seed=seed,
                      run__batch_size=batch_size, run__workers=workers, publish__version=version,
                      publish__push_to_hub=push_to_hub, teacher__backend=teacher, teacher__base_urls=base_url,
                      teacher__model=model)
    if not cfg.inputs.manifests:
        raise CotaforgeError("the config lists no inputs.manifests; add one or pass --manifest")
    return cfg


class _Bars:
    """Rich progress bars fed by cotaforge.progress (called from Prefect's worker threads)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}
        self.teacher_counts: dict[str, list[float]] = {}  # stage -> [first answer time, samples, tokens]

    def start(self, stage: str, total: int | None) -> None:
        self.tasks[stage] = self.progress.add_task(stage, total=total, rate="")

    def teacher(self, stage: str, samples: int, tokens: int) -> None:
        """Teacher answers as they arrive: samples/s and completion tokens/s since the stage's first answer."""
        import time

        counts = self.teacher_counts.setdefault(stage, [time.monotonic(), 0, 0])
        counts[1] += samples
        counts[2] += tokens
        elapsed_s = max(time.monotonic() - counts[0], 1e-6)
        if stage in self.tasks:
            self.progress.update(self.tasks[stage],
                                 rate=f"{counts[1] / elapsed_s:.1f} samples/s {counts[2] / elapsed_s:.0f} tok/s")

    def advance(self, stage: str, rows: int) -> None:
        if stage in self.tasks:
            self.progress.advance(self.tasks[stage], rows)


def _run_with_progress(function, *args):
    from cotaforge import progress as progress_hook

    columns = [TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}")]
    with Progress(*columns, console=console, transient=False) as bars:
        progress_hook.set_listener(_Bars(bars))
        try:
            return function(*args)
        finally:
            progress_hook.set_listener(None)


def _summary(reports: list[StageReport], cfg: RunConfig, dataset: Path | None) -> None:
    from cotaforge.store import RunDir

    table = Table(title=f"cotaforge run {cfg.run_name}")
    for column in ("stage", "in", "out", "rejected", "done", "skipped", "seconds"):
        table.add_column(column, justify="left" if column in ("stage", "rejected") else "right")
    for r in reports:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(r.rejected.items())) or "0"
        table.add_row(r.stage, str(r.rows_in), str(r.rows_out), rejected, str(r.parts_done), str(r.parts_skipped),
                      f"{r.seconds:.1f}")
    Console().print(table)
    run = RunDir.for_config(cfg)
    rejected = sum(r.rejected_total for r in reports if r.stage != "balance")
    balanced = sum(r.rejected.get("balanced_out", 0) for r in reports)
    print(f"Rejected rows: {rejected} (plus {balanced} balanced out); reasons in {run.root / 'rejects'}")
    print(f"Run report: {run.root / 'report.md'}")
    if dataset is not None:
        print(f"Dataset: {dataset}")


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


@app.command()
def run(config: ConfigArg = None, manifest: ManifestOpt = None, out: OutOpt = None, name: NameOpt = None,
        group_by: GroupOpt = None, set_: SetOpt = None, seed: SeedOpt = None, batch_size: BatchOpt = None,
        workers: WorkersOpt = None, version: VersionOpt = None, push_to_hub: PushOpt = None,
        teacher: TeacherOpt = None, base_url: BaseUrlOpt = None, model: ModelOpt = None,
        verbose: VerboseOpt = False) -> None:
    """Run the whole pipeline: ingest, caption, expand, validate, balance, publish."""
    try:
        cfg = _build_config(config, manifest, out, name, group_by, set_, seed, batch_size, workers, version, push_to_hub,
                            teacher, base_url, model)
        _prepare_prefect(verbose)
        from cotaforge.stages.publish import dataset_dir
        from flows.pipeline import pipeline_flow

        reports = _run_with_progress(pipeline_flow, cfg.to_dict())
    except (CotaforgeError, FileNotFoundError) as exc:
        _fail(exc)
    _summary(reports, cfg, dataset_dir(cfg))


def _stage_command(stage: str, flow_module: str, flow_name: str, doc: str):
    def command(config: ConfigArg = None, manifest: ManifestOpt = None, out: OutOpt = None, name: NameOpt = None,
                group_by: GroupOpt = None, set_: SetOpt = None, seed: SeedOpt = None, batch_size: BatchOpt = None,
                workers: WorkersOpt = None, version: VersionOpt = None, push_to_hub: PushOpt = None,
                teacher: TeacherOpt = None, base_url: BaseUrlOpt = None, model: ModelOpt = None,
                verbose: VerboseOpt = False) -> None:
        try:
            cfg = _build_config(config, manifest, out, name, group_by, set_, seed, batch_size, workers, version,
                                push_to_hub, teacher, base_url, model)
            _prepare_prefect(verbose)
            import importlib

            from flows.common import with_workers

            stage_flow = getattr(importlib.import_module(flow_module), flow_name)
            report = _run_with_progress(with_workers(stage_flow, cfg.to_dict()), cfg.to_dict())
        except (CotaforgeError, FileNotFoundError) as exc:
            _fail(exc)
        from cotaforge.stages.publish import dataset_dir

        _summary([report], cfg, dataset_dir(cfg) if stage == "publish" else None)

    command.__doc__ = doc
    app.command(stage)(command)


for _stage, _doc in (
    ("ingest", "Read manifests, decode and measure clips (drops duplicates and defects)."),
    ("caption", "Caption each ingested clip."),
    ("expand", "Write chain-of-thought samples for each captioned clip."),
    ("validate", "Check every sample; failures go to rejects with reason codes."),
    ("balance", "Even out samples per (class, prompt style) and answers."),
    ("publish", "Write the dataset shards, manifest and card (and push them if asked)."),
):
    _stage_command(_stage, f"flows.{_stage}", f"{_stage}_flow", _doc)


# Fine-tuning commands: their module imports torch lazily, so the CLI starts fast without the train extra.
from cotaforge.train.cli import evaluate as _evaluate_command  # noqa: E402
from cotaforge.train.cli import finetune as _finetune_command  # noqa: E402

app.command("finetune")(_finetune_command)
app.command("evaluate")(_evaluate_command)


@app.command()
def inspect(dataset: Annotated[Path, typer.Argument(help="a published dataset version folder")],
            samples: Annotated[int, typer.Option(help="sample rows to show")] = 2) -> None:
    """Print a published dataset's statistics and a few samples."""
    import pyarrow.parquet as pq

    manifest_path = dataset / "manifest.json"
    if not manifest_path.is_file():
        _fail(CotaforgeError(f"{dataset} has no manifest.json; point at output/datasets/<name>/<version>"))
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    out = Console()
    out.print(f"[bold]{manifest['name']}[/] {manifest['version']}  rows {manifest['rows']}  "
              f"shards {len(manifest['shards'])}  fingerprint {manifest['fingerprint']}")
    columns = ["split", "class_label", "prompt_style", "question_type", "answer", "question", "options", "assistant_text"]
    counts: dict[tuple[str, str], int] = {}
    shown = 0
    for shard in manifest["shards"]:
        table = pq.read_table(dataset / shard["path"], columns=columns)
        for cls, style in zip(table["class_label"].to_pylist(), table["prompt_style"].to_pylist()):
            counts[(cls, style)] = counts.get((cls, style), 0) + 1
        for row in table.slice(0, max(samples - shown, 0)).to_pylist():
            out.rule(f"{row['split']} · {row['question_type']} · {row['prompt_style']}")
            out.print(row["question"], *[f"  {chr(65 + i)}. {o}" for i, o in enumerate(row["options"])], sep="\n",
                      markup=False)
            out.print(row["assistant_text"], markup=False)
            shown += 1
    styles = sorted({s for _, s in counts})
    grid = Table(title="samples per (class, prompt style)")
    grid.add_column("class")
    for style in styles:
        grid.add_column(style, justify="right")
    for cls in sorted({c for c, _ in counts}):
        grid.add_row(cls, *(str(counts.get((cls, s), 0)) for s in styles))
    out.print(grid)


@schemas_app.command("export")
def schemas_export(out: Annotated[Path, typer.Option(help="folder for the *.json files")] = Path("schemas")) -> None:
    """Write the JSON Schema of every record model to OUT/<name>.json."""
    from cotaforge.schemas import export_schemas

    for path in export_schemas(out):
        print(path)


@schemas_app.command("check")
def schemas_check(folder: Annotated[Path, typer.Option(help="folder of committed schemas")] = Path("schemas")) -> None:
    """Exit 1 when the committed schemas differ from the models."""
    from cotaforge.schemas import schema_drift

    drift = schema_drift(folder)
    if drift:
        console.print("schemas out of date: " + ", ".join(drift) + "; run `cotaforge schemas export`")
        raise typer.Exit(code=1)
    print("schemas up to date")


RunArg = Annotated[Path, typer.Argument(help="the run directory, e.g. output/runs/demo")]
DbOpt = Annotated[Optional[str], typer.Option("--db", help="review database URL (default: review.db_url of the "
                                                          "run's config, else RUN/review/review.sqlite)")]


def _review_store(run_dir: Path, db: str | None):
    from cotaforge.review.db import ReviewStore, resolve_db_url
    from cotaforge.review.samples import load_run_config
    from cotaforge.store import RunDir

    if not (run_dir / "config.yaml").is_file():
        raise CotaforgeError(f"{run_dir} is not a run directory (no config.yaml); point at output/runs/<run>")
    run = RunDir(run_dir)
    return run, ReviewStore(resolve_db_url(run, load_run_config(run), db))


@review_app.command("serve")
def review_serve(run_dir: RunArg, host: Annotated[str, typer.Option(help="address to bind; keep 127.0.0.1 "
                                                                          "unless a proxy with TLS is in front")] = "127.0.0.1",
                 port: Annotated[int, typer.Option(help="port to listen on")] = 8700, db: DbOpt = None) -> None:
    """Start the review web app for a run (sign in with a token from `review add-annotator`)."""
    import uvicorn

    from cotaforge.review.app import create_app

    try:
        review = create_app(run_dir, db)
    except (CotaforgeError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"review app for {run_dir} at http://{host}:{port}/ (Ctrl+C stops it)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print("warning: reachable from other machines over plain HTTP; put a TLS proxy in front")
    uvicorn.run(review, host=host, port=port, log_level="info", server_header=False)


@review_app.command("add-annotator")
def review_add_annotator(name: Annotated[str, typer.Argument(help="the annotator's name, e.g. ana")],
                         run_dir: Annotated[Path, typer.Option("--run", help="the run directory")],
                         db: DbOpt = None,
                         rotate: Annotated[bool, typer.Option(help="replace the token of an existing annotator")] = False) -> None:
    """Create an annotator and print their sign-in token once (only its hash is stored)."""
    try:
        _, store = _review_store(run_dir, db)
        token = store.add_annotator(name, rotate=rotate)
    except (CotaforgeError, ValueError) as exc:
        _fail(exc)
    console.print(f"token for {name} (shown once, stored hashed; give it to them privately):")
    print(token)


@review_app.command("export-labelstudio")
def review_export_labelstudio(
        run_dir: RunArg, out: Annotated[Path, typer.Argument(help="the tasks JSON file to write")], db: DbOpt = None,
        audio_prefix: Annotated[str, typer.Option(help="URL prefix of the audio files, before CLIP_ID.wav")] = "audio/",
        audio_dir: Annotated[Optional[Path], typer.Option(help="also write each clip as DIR/CLIP_ID.wav")] = None) -> None:
    """Write the run's balanced samples (and any decisions) as Label Studio tasks, with its labeling config."""
    from cotaforge.review.labelstudio import export_tasks
    from cotaforge.review.samples import RunSamples

    try:
        run, store = _review_store(run_dir, db)
        written = export_tasks(RunSamples(run), store, out, audio_prefix, audio_dir)
    except (CotaforgeError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    print(f"{written} tasks in {out}; labeling config in {out.with_suffix('.xml')}")


@review_app.command("import-labelstudio")
def review_import_labelstudio(run_dir: RunArg,
                              tasks: Annotated[Path, typer.Argument(help="Label Studio's JSON export of tasks")],
                              db: DbOpt = None) -> None:
    """Store the annotations of a Label Studio export as decisions (re-importing the same file adds nothing)."""
    from cotaforge.review.labelstudio import import_tasks
    from cotaforge.review.samples import RunSamples

    try:
        run, store = _review_store(run_dir, db)
        report = import_tasks(RunSamples(run), store, tasks)
    except (CotaforgeError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    print(f"imported {report.recorded} decisions ({report.already} already stored, {len(report.problems)} skipped)")
    for problem in report.problems:
        console.print(f"skipped: {problem}", markup=False)
    if report.problems:
        raise typer.Exit(code=1)


teacher_app = typer.Typer(no_args_is_help=True, help="Teacher LLM servers.")
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("serve")
def teacher_serve(
        vllm: Annotated[Optional[str], typer.Option("--vllm", help="serve this model with vLLM (GPU host), e.g. Qwen/Qwen2.5-7B-Instruct")] = None,
        local: Annotated[bool, typer.Option("--local", help="serve the small Gemma 3 270M GGUF with llama.cpp on the CPU")] = False,
        host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 to serve other machines)")] = "127.0.0.1",
        port: Annotated[Optional[int], typer.Option(help="port (default 8000 for vLLM, 8080 for --local)")] = None,
        max_num_seqs: Annotated[int, typer.Option(help="vLLM: sequences decoded at once")] = 256,
        audio_per_prompt: Annotated[int, typer.Option(help="vLLM: audio clips per request (0 for text-only models)")] = 1,
        structured_backend: Annotated[str, typer.Option(help="vLLM: structured-output backend")] = "xgrammar",
        extra: Annotated[Optional[list[str]], typer.Option("--extra", help="one more `vllm serve` argument; repeatable")] = None,
        model_dir: Annotated[Path, typer.Option(help="--local: where the GGUF is assembled")] = Path("output/cache/models"),
        ready_timeout_s: Annotated[float, typer.Option(help="how long to wait for the server to answer")] = 1800.0) -> None:
    """Start a teacher server, wait until it answers, print how to point a run at it, and keep it running."""
    from cotaforge.teacher import serve

    if bool(vllm) == local:
        _fail(CotaforgeError("give exactly one of --vllm MODEL or --local"))
    try:
        if vllm:
            port = port or 8000
            command = serve.vllm_command(vllm, host, port, max_num_seqs, audio_per_prompt, structured_backend, extra)
            model, mode = vllm, "json_schema"
        else:
            port = port or 8080
            command = serve.llama_cpp_command(serve.local_model_path(model_dir), host, port)
            model, mode = serve.LOCAL_MODEL_NAME, "json_object"
        url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/v1"
        console.print(f"starting: {' '.join(command)}")
        process = serve.start_server(command, url, timeout_s=ready_timeout_s)
    except CotaforgeError as exc:
        _fail(exc)
    console.print(f"[bold green]teacher ready[/] at {url}\n  cotaforge run CONFIG.yaml --teacher openai --base-url {url} "
                  f"--model {model} --set teacher.structured_output={mode}")
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
