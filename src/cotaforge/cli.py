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
from cotaforge.console import console, fail
from cotaforge.errors import CotaforgeError
from cotaforge.location import check_reachable, url_protocol
from cotaforge.models import StageReport

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Make staged chain-of-thought QA corpora from labeled audio.")
schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schemas of cotaforge's records.")
app.add_typer(schemas_app, name="schemas")

ConfigArg = Annotated[Optional[Path], typer.Argument(help="run config YAML; optional when --manifest is given")]
# Paths that may be URLs (s3://bucket/key, gs://...) are taken as text: a Path would fold the '//'.
ManifestOpt = Annotated[Optional[list[str]], typer.Option(
    "--manifest", "-m", help="CSV/JSONL/Parquet manifest or label folder, a path or URL (s3://...); repeatable")]
OutOpt = Annotated[Optional[str], typer.Option(
    "--out", "-o", help="output root (runs/ and datasets/ go here): a folder or a URL such as s3://bucket/prefix")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="run name (default: the manifests' folder names)")]
GroupOpt = Annotated[Optional[str], typer.Option("--group-by", "--group-column",
                                                  help="manifest column that groups rows for splitting")]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help="corpus layout: esc50, urbansound8k, fsd50k, audioset, audiofolder, strong-tsv "
                     "(default: detected from the manifest's header)")]
PathColumnOpt = Annotated[Optional[str], typer.Option("--path-column", help="column with the audio path (default path)")]
PathTemplateOpt = Annotated[Optional[str], typer.Option(
    "--path-template", help="audio path built from columns, e.g. 'audio/fold{fold}/{slice_file_name}'")]
LabelColumnOpt = Annotated[Optional[str], typer.Option("--label-column", help="column with the label(s) (default label)")]
LabelSepOpt = Annotated[Optional[str], typer.Option("--label-sep", help="separator of several labels in a cell (default ;)")]
LabelNamesOpt = Annotated[Optional[Path], typer.Option("--label-names", help="CSV table from label id to display name")]
IdColumnOpt = Annotated[Optional[str], typer.Option("--id-column", help="column with the clip's own id (default id)")]
AudioRootOpt = Annotated[Optional[str], typer.Option("--audio-root", help="folder (or URL) relative audio paths start from")]
HfDatasetOpt = Annotated[Optional[list[str]], typer.Option(
    "--hf-dataset", help="Hugging Face dataset: a save_to_disk or Parquet folder, or a Hub name; repeatable")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override any config key: section.key=value")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="seed of every random choice")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="clips per batch")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="batches processed at once")]
ExecutorOpt = Annotated[Optional[str], typer.Option(
    "--executor", help="threads (this process) or dask (worker processes: a local cluster of --workers, or --dask-address)")]
DaskAddressOpt = Annotated[Optional[str], typer.Option(
    "--dask-address", help="scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786 (implies --executor dask)")]
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
    # Prefect's API server is a separate process: started here, before Prefect is imported, so that it dies
    # with this command even when the command is killed (Prefect's own would outlive a SIGKILL).
    from cotaforge.prefect_server import start_prefect_server

    start_prefect_server(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))


def _build_config(config: Path | None, manifest: list[str] | None, out: str | None, name: str | None,
                  group_by: str | None, overrides: list[str] | None, seed: int | None = None,
                  batch_size: int | None = None, workers: int | None = None, version: str | None = None,
                  push_to_hub: str | None = None, teacher: str | None = None, base_url: list[str] | None = None,
                  model: str | None = None, hf_dataset: list[str] | None = None,
                  mapping: dict[str, object] | None = None, executor: str | None = None,
                  dask_address: str | None = None) -> RunConfig:
    """The run config from a file and flags; `mapping` holds the column-mapping flags (inputs.<key>)."""
    if config is None and not manifest and not hf_dataset:
        raise CotaforgeError("give a config file, a --manifest or an --hf-dataset (see `cotaforge run --help`)")
    inputs: list[object] = [_absolute(m) for m in manifest or []]
    inputs += [{"hf_dataset": str(Path(h).resolve()) if Path(h).exists() else h} for h in hf_dataset or []]
    mapping = {k: (_absolute(v) if k in ("label_names", "audio_root") else v) for k, v in (mapping or {}).items()}
    cfg = load_config(config, overrides, inputs__manifests=inputs, **{f"inputs__{k}": v for k, v in mapping.items()},
                      run__out_dir=out, run__name=name, inputs__group_by=group_by, run__seed=seed,
                      run__batch_size=batch_size, run__workers=workers, publish__version=version,
                      publish__push_to_hub=push_to_hub, teacher__backend=teacher, teacher__base_urls=base_url,
                      teacher__model=model, run__executor=executor or ("dask" if dask_address else None),
                      run__dask_address=dask_address)
    if not cfg.inputs.manifests:
        raise CotaforgeError("the config lists no inputs.manifests; add one or pass --manifest or --hf-dataset")
    return cfg


def _check_locations(cfg: RunConfig) -> None:
    """Stop before any work when a bucket of the output or of an input is missing or cannot be read with the
    credentials at hand (CotaforgeError naming the URL); local paths are checked where they are read."""
    check_reachable(cfg.run.out_dir)
    for entry in cfg.inputs.entries():
        for path in (entry.path, entry.audio_root):
            if path is not None:
                check_reachable(path)


def _absolute(path: str | Path) -> str | Path:
    """A local path made absolute; a URL as given."""
    return path if url_protocol(str(path)) else Path(path).resolve()


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
    from flows.common import flow_settings  # flows/ is importable once _prepare_prefect ran

    columns = [TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}")]
    with Progress(*columns, console=console, transient=False) as bars, flow_settings():
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
    _teacher_summary(reports)
    run = RunDir.for_config(cfg)
    # Rows of the input or of generated samples that were dropped; scenes the margin rules would not allow
    # were never rows, and balancing out is by design: both are counted apart.
    rejected = sum(r.rejected_total for r in reports if r.stage not in ("balance", "compose"))
    balanced = sum(r.rejected.get("balanced_out", 0) for r in reports)
    unbuilt = sum(r.rejected_total for r in reports if r.stage == "compose")
    scenes = f", {unbuilt} scenes not built" if unbuilt else ""
    print(f"Rejected rows: {rejected} (plus {balanced} balanced out{scenes}); reasons in {run.root / 'rejects'}")
    print(f"Run report: {run.root / 'report.md'}")
    if dataset is not None:
        print(f"Dataset: {dataset}")


def _teacher_summary(reports: list[StageReport]) -> None:
    """What this run sent the teacher beside what the parts hold (a skipped part sent nothing now)."""
    from cotaforge.report import teacher_rows

    header, rows = teacher_rows(reports)
    if not rows:
        return
    shown = {"stage": "stage", "requests sent by this run": "sent", "cache hits": "cache hits",
             "completion tokens": "tokens out", "cost (USD)": "cost $", "requests held by the parts": "parts: requests",
             "cost held by the parts (USD)": "parts: cost $"}
    picks = [header.index(name) for name in shown]
    table = Table(title="teacher: sent by this run | held by the parts")
    for name in shown.values():
        table.add_column(name, justify="left" if name == "stage" else "right")
    for row in rows:
        table.add_row(*(row[i] for i in picks))
    Console().print(table)





MAPPING_FLAGS = ("preset", "path_column", "path_template", "label_column", "label_sep", "label_names", "id_column",
                 "audio_root")


def _mapping_flags(arguments: dict[str, object]) -> dict[str, object]:
    """The column-mapping flags a command was given, as inputs.<key> values."""
    return {key: arguments[key] for key in MAPPING_FLAGS if arguments.get(key) is not None}


@app.command()
def run(config: ConfigArg = None, manifest: ManifestOpt = None, out: OutOpt = None, name: NameOpt = None,
        group_by: GroupOpt = None, set_: SetOpt = None, seed: SeedOpt = None, batch_size: BatchOpt = None,
        workers: WorkersOpt = None, version: VersionOpt = None, push_to_hub: PushOpt = None,
        teacher: TeacherOpt = None, base_url: BaseUrlOpt = None, model: ModelOpt = None,
        hf_dataset: HfDatasetOpt = None, preset: PresetOpt = None, path_column: PathColumnOpt = None,
        path_template: PathTemplateOpt = None, label_column: LabelColumnOpt = None, label_sep: LabelSepOpt = None,
        label_names: LabelNamesOpt = None, id_column: IdColumnOpt = None, audio_root: AudioRootOpt = None,
        executor: ExecutorOpt = None, dask_address: DaskAddressOpt = None, verbose: VerboseOpt = False) -> None:
    """Run the whole pipeline: ingest, compose, caption, expand, validate, balance, publish."""
    try:
        cfg = _build_config(config, manifest, out, name, group_by, set_, seed, batch_size, workers, version, push_to_hub,
                            teacher, base_url, model, hf_dataset, _mapping_flags(locals()), executor, dask_address)
        _check_locations(cfg)
        _prepare_prefect(verbose)
        from cotaforge.stages.publish import dataset_dir
        from flows.executors import check_scheduler
        from flows.pipeline import pipeline_flow

        check_scheduler(cfg)

        reports = _run_with_progress(pipeline_flow, cfg.to_dict())
    except (CotaforgeError, FileNotFoundError) as exc:
        fail(exc)
    _summary(reports, cfg, dataset_dir(cfg))


def _stage_command(stage: str, flow_module: str, flow_name: str, doc: str):
    def command(config: ConfigArg = None, manifest: ManifestOpt = None, out: OutOpt = None, name: NameOpt = None,
                group_by: GroupOpt = None, set_: SetOpt = None, seed: SeedOpt = None, batch_size: BatchOpt = None,
                workers: WorkersOpt = None, version: VersionOpt = None, push_to_hub: PushOpt = None,
                teacher: TeacherOpt = None, base_url: BaseUrlOpt = None, model: ModelOpt = None,
                hf_dataset: HfDatasetOpt = None, preset: PresetOpt = None, path_column: PathColumnOpt = None,
                path_template: PathTemplateOpt = None, label_column: LabelColumnOpt = None,
                label_sep: LabelSepOpt = None, label_names: LabelNamesOpt = None, id_column: IdColumnOpt = None,
                audio_root: AudioRootOpt = None, executor: ExecutorOpt = None, dask_address: DaskAddressOpt = None,
                verbose: VerboseOpt = False) -> None:
        try:
            cfg = _build_config(config, manifest, out, name, group_by, set_, seed, batch_size, workers, version,
                                push_to_hub, teacher, base_url, model, hf_dataset, _mapping_flags(locals()), executor,
                                dask_address)
            _check_locations(cfg)
            _prepare_prefect(verbose)
            import importlib

            from flows.common import run_stage
            from flows.executors import check_scheduler

            check_scheduler(cfg)
            stage_flow = getattr(importlib.import_module(flow_module), flow_name)
            report = _run_with_progress(run_stage, stage_flow, cfg.to_dict())
        except (CotaforgeError, FileNotFoundError) as exc:
            fail(exc)
        from cotaforge.stages.publish import dataset_dir

        _summary([report], cfg, dataset_dir(cfg) if stage == "publish" else None)

    command.__doc__ = doc
    app.command(stage)(command)


for _stage, _doc in (
    ("ingest", "Read manifests, decode and measure clips (drops duplicates and defects)."),
    ("compose", "Build scenes (sequences, repeats, mixtures) with exact timelines from the ingested clips."),
    ("caption", "Caption each ingested clip and scene."),
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


@app.command("export")
def export(dataset: Annotated[Path, typer.Argument(help="a published dataset version folder")],
           format_: Annotated[str, typer.Option("--format", help="swift (ms-swift JSONL) or llamafactory (sharegpt "
                                                                  "+ dataset_info.json)")],
           out: Annotated[Path, typer.Option(help="folder for the JSONL files and audio/")],
           split: Annotated[Optional[list[str]], typer.Option("--split", help="splits to export (repeatable); "
                                                                              "default all")] = None) -> None:
    """Write the dataset for ms-swift or LLaMA-Factory: the conversations cotaforge trains on, WAV per clip."""
    from cotaforge.export import export_dataset

    try:
        report = export_dataset(dataset, format_, out, split or None)  # type: ignore[arg-type]
    except ValueError as exc:
        fail(exc)
    rows = ", ".join(f"{name} {count}" for name, count in report.rows.items())
    console.print(f"exported {rows} rows and {report.clips} clips ({report.format}) to {report.out_dir}")


@app.command()
def inspect(dataset: Annotated[Path, typer.Argument(help="a published dataset version folder")],
            samples: Annotated[int, typer.Option(help="sample rows to show")] = 2) -> None:
    """Print a published dataset's statistics and a few samples."""
    import pyarrow.parquet as pq

    manifest_path = dataset / "manifest.json"
    if not manifest_path.is_file():
        fail(CotaforgeError(f"{dataset} has no manifest.json; point at output/datasets/<name>/<version>"))
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


# Command groups live beside what they drive; each module imports its heavy parts lazily.
from cotaforge.review.cli import review_app  # noqa: E402
from cotaforge.teacher.cli import teacher_app  # noqa: E402

app.add_typer(review_app, name="review")
app.add_typer(teacher_app, name="teacher")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
