"""`cotaforge review ...`: serve the review app, manage annotators, move decisions to and from Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotaforge.console import console, fail
from cotaforge.errors import CotaforgeError

review_app = typer.Typer(no_args_is_help=True,
                         help="Review samples in the browser; `cotaforge publish` applies the decisions.")

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
                 port: Annotated[int, typer.Option(help="port to listen on")] = 8700, db: DbOpt = None,
                 trust_proxy: Annotated[bool, typer.Option(help="take the client address from X-Forwarded-For "
                                                                "sent by a proxy on 127.0.0.1 (sign-in is "
                                                                "throttled per address)")] = False) -> None:
    """Start the review web app for a run (sign in with a token from `review add-annotator`)."""
    import uvicorn

    from cotaforge.review.app import create_app

    try:
        review = create_app(run_dir, db)
    except (CotaforgeError, FileNotFoundError) as exc:
        fail(exc)
    console.print(f"review app for {run_dir} at http://{host}:{port}/ (Ctrl+C stops it)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print("warning: reachable from other machines over plain HTTP; put a TLS proxy in front")
    # Without a trusted proxy, a client could pick its own address with X-Forwarded-For and dodge the throttle.
    uvicorn.run(review, host=host, port=port, log_level="info", server_header=False, proxy_headers=trust_proxy,
                forwarded_allow_ips="127.0.0.1" if trust_proxy else None)


@review_app.command("add-annotator")
def review_add_annotator(
        name: Annotated[str, typer.Argument(help="the annotator's name, e.g. ana")],
        run_dir: Annotated[Path, typer.Option("--run", help="the run directory")],
        db: DbOpt = None,
        rotate: Annotated[bool, typer.Option(help="replace the token of an existing annotator (and re-enable "
                                                  "a removed one)")] = False,
        admin: Annotated[Optional[bool], typer.Option("--admin/--no-admin", help="an admin sees everyone's "
                                                                                  "figures on the progress page")] = None,
        email: Annotated[Optional[str], typer.Option(help="their e-mail: Label Studio matches annotations to its "
                                                          "users by it")] = None) -> None:
    """Create an annotator and print their sign-in token once (only its hash is stored).

    For an existing annotator, --admin/--no-admin and --email change their profile (no new token).
    """
    try:
        _, store = _review_store(run_dir, db)
        token = store.add_annotator(name, rotate=rotate, admin=admin, email=email)
    except (CotaforgeError, ValueError) as exc:
        fail(exc)
    if token is None:
        print(f"updated {name}")
        return
    console.print(f"token for {name} (shown once, stored hashed; give it to them privately):")
    print(token)


@review_app.command("annotators")
def review_annotators(run_dir: RunArg, db: DbOpt = None) -> None:
    """List the annotators: role, e-mail, decisions stored, when last seen, whether removed."""
    try:
        _, store = _review_store(run_dir, db)
        rows = store.annotators()
    except (CotaforgeError, ValueError) as exc:
        fail(exc)
    if not rows:
        print("no annotators yet: add one with `cotaforge review add-annotator NAME --run RUN`")
        return
    width = max(len(r.name) for r in rows)
    print(f"{'name':<{width}}  {'role':<9}  {'decisions':>9}  {'last seen (UTC)':<27}  email")
    for r in rows:
        role = "removed" if r.disabled else "admin" if r.admin else "annotator"
        print(f"{r.name:<{width}}  {role:<9}  {r.decisions:>9}  {r.last_seen_at or 'never':<27}  {r.email or '-'}")


@review_app.command("remove-annotator")
def review_remove_annotator(name: Annotated[str, typer.Argument(help="the annotator to disable")],
                            run_dir: Annotated[Path, typer.Option("--run", help="the run directory")],
                            db: DbOpt = None) -> None:
    """Disable an annotator: they can no longer sign in and their open samples go back to the queue.
    Their decisions stay (`add-annotator NAME --rotate` re-enables them with a new token)."""
    try:
        _, store = _review_store(run_dir, db)
        store.remove_annotator(name)
    except (CotaforgeError, ValueError) as exc:
        fail(exc)
    print(f"removed {name}: signed out, cannot sign in; their decisions stay")


@review_app.command("export-labelstudio")
def review_export_labelstudio(
        run_dir: RunArg, out: Annotated[Path, typer.Argument(help="the tasks JSON file to write")], db: DbOpt = None,
        audio_prefix: Annotated[str, typer.Option(help="URL prefix of the audio files, before CLIP_ID.wav")] = "audio/",
        audio_dir: Annotated[Optional[Path], typer.Option(help="also write each clip as DIR/CLIP_ID.wav")] = None,
        email_domain: Annotated[Optional[str], typer.Option(help="e-mail of annotators without one: NAME@DOMAIN "
                                                                 "(Label Studio matches users by e-mail)")] = None) -> None:
    """Write the run's balanced samples (and any decisions) as Label Studio tasks, with its labeling config."""
    from cotaforge.review.labelstudio import export_tasks
    from cotaforge.review.samples import RunSamples

    try:
        run, store = _review_store(run_dir, db)
        written = export_tasks(RunSamples(run), store, out, audio_prefix, audio_dir, email_domain=email_domain)
    except (CotaforgeError, FileNotFoundError, ValueError) as exc:
        fail(exc)
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
        fail(exc)
    print(f"imported {report.recorded} decisions ({report.already} already stored, {len(report.problems)} skipped)")
    for problem in report.problems:
        console.print(f"skipped: {problem}", markup=False)
    if report.problems:
        raise typer.Exit(code=1)
