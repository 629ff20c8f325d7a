"""The review web app: server-rendered pages (FastAPI + Jinja2) and one small script for keyboard shortcuts.

Security: every page but sign-in needs a session (a random id in an HttpOnly cookie, stored hashed);
every form carries a CSRF token, an HMAC of a random cookie under the database's secret; all text from
labels and the teacher is autoescaped by Jinja2 and a strict Content-Security-Policy forbids inline
script; audio and spectrograms are looked up by a clip id that must be in the run's index, never by a path;
tokens travel only in POST bodies, so they never reach an access log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from markupsafe import escape
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from cotaforge.config import RunConfig
from cotaforge.models import COT_STAGES
from cotaforge.review.db import Annotator, ReviewStore, resolve_db_url
from cotaforge.review.queue import QueueFilter, next_sample
from cotaforge.review.samples import EDIT_FIELDS, RunSamples, apply_revision, revise_sample, stored_fields
from cotaforge.review.summary import summarize
from cotaforge.store import RunDir

SESSION_COOKIE = "cotaforge_session"
CSRF_COOKIE = "cotaforge_csrf"
SAMPLE_ID = re.compile(r"[0-9a-f]{8,64}")
CLIP_ID = re.compile(r"[0-9a-f]{16}")
COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{20,64}")
MAX_NOTE_CHARS = 2000
MAX_FIELD_CHARS = 20_000
HERE = Path(__file__).parent
# Which acoustic fact a validator flag is about, so the page can highlight it.
FLAG_FACTS = {"clipping": "clipping_ratio", "very_quiet": "loudness_dbfs"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
SHORTCUTS = (
    ("a", "accept the sample"),
    ("r", "reject: opens the reasons; 1-9 or arrows pick one, Enter confirms"),
    ("e", "edit any text field; Ctrl+Enter saves a new revision, Esc cancels"),
    ("space", "play or pause the audio"),
    ("n", "next sample (from the start page)"),
    ("?", "show or hide this list"),
)


class NotSignedIn(Exception):
    """The request has no valid session."""


class CsrfRejected(Exception):
    """A form arrived without the CSRF token of this browser."""


class BadRequest(Exception):
    """A form value is out of range; the message says which."""


class NotFound(BadRequest):
    """The sample or clip is not in this run."""


def create_app(run_root: Path, db_url: str | None = None, cfg: RunConfig | None = None) -> FastAPI:
    """The app for one run directory; `db_url` overrides the config's review database."""
    run = RunDir(Path(run_root))
    samples = RunSamples(run, cfg)
    store = ReviewStore(resolve_db_url(run, samples.cfg, db_url))
    reasons = list(samples.cfg.review.reject_reasons)
    choices = samples.choices()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    app = FastAPI(title="cotaforge review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.samples = store, samples
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def sign(value: str) -> str:
        return hmac.new(store.secret, value.encode(), hashlib.sha256).hexdigest()

    def render(request: Request, template: str, status: int = 200, annotator: Annotator | None = None,
               **context: object) -> HTMLResponse:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        fresh = not COOKIE_VALUE.fullmatch(cookie)
        if fresh:
            cookie = secrets.token_urlsafe(32)
        page = env.get_template(template).render(csrf_token=sign(cookie), annotator=annotator,
                                                 shortcuts=SHORTCUTS, **context)
        response = HTMLResponse(page, status_code=status)
        if fresh:
            response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
        return response

    def signed_in(request: Request) -> Annotator:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        annotator = store.session_annotator(session_id) if COOKIE_VALUE.fullmatch(session_id) else None
        if annotator is None:
            raise NotSignedIn()
        return annotator

    def check_csrf(request: Request, token: str) -> None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not (COOKIE_VALUE.fullmatch(cookie) and token and hmac.compare_digest(token, sign(cookie))):
            raise CsrfRejected()

    def read_filter(class_label: str, style: str, qtype: str, flag: str) -> QueueFilter:
        """Only known values filter; anything else (typos, hostile input) means no filter on that field."""
        return QueueFilter(
            class_label=class_label if class_label in choices["class"] else "",
            prompt_style=style if style in choices["style"] else "",
            question_type=qtype if qtype in choices["type"] else "",
            flag=flag if flag in choices["flag"] or flag in ("any_flag", "no_flag") else "")

    def sample_known(sample_id: str) -> None:
        if not SAMPLE_ID.fullmatch(sample_id) or sample_id not in samples.by_id:
            raise NotFound("no such sample in this run")

    def current_revision(sample_id: str) -> tuple[dict, int]:
        """The sample as reviewers see it: its newest revision, with that revision's number."""
        sample = samples.sample(sample_id)
        revisions = store.revision_fields(sample_id)
        if not revisions:
            return sample, 0
        latest = max(rev for _, rev in revisions)
        return apply_revision(sample, revisions[(sample_id, latest)]), latest

    def go_next(annotator: Annotator, queue_filter: QueueFilter) -> RedirectResponse:
        sample_id = next_sample(samples, store, annotator.id, queue_filter)
        query = urlencode(queue_filter.as_query())
        if sample_id is None:
            return RedirectResponse(f"/?{urlencode({**queue_filter.as_query(), 'empty': '1'})}", status_code=303)
        return RedirectResponse(f"/samples/{sample_id}" + (f"?{query}" if query else ""), status_code=303)

    def sample_page(request: Request, annotator: Annotator, sample_id: str, queue_filter: QueueFilter,
                    status: int = 200, errors: list[str] | None = None, draft: dict | None = None) -> HTMLResponse:
        sample, revision = current_revision(sample_id)
        entry = samples.by_id[sample_id]
        clip = samples.clip(entry.clip_id)
        validation = json.loads(sample["validation"] or "{}")
        flags = list(validation.get("flags", []))
        mine = [d for d in store.decisions(sample_id) if d.annotator == annotator.name]
        return render(
            request, "sample.html", status=status, annotator=annotator, sample=sample, revision=revision,
            entry=entry, clip=clip, facts=clip["facts"], flags=flags,
            flagged_facts={FLAG_FACTS[f] for f in flags if f in FLAG_FACTS},
            metadata=json.loads(sample["metadata"] or "{}"), stages=COT_STAGES,
            letters=[chr(65 + i) for i in range(len(sample["options"]))], reasons=reasons,
            nonce=secrets.token_urlsafe(18), filters=queue_filter.as_query(), errors=errors or [],
            draft=draft or {name: sample[name] for name in EDIT_FIELDS}, my_last=mine[-1] if mine else None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _exc: NotSignedIn) -> Response:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse("Sign in first: <a href=\"/login\">/login</a>", status_code=401)

    @app.exception_handler(CsrfRejected)
    async def csrf_rejected(_request: Request, _exc: CsrfRejected) -> Response:
        return HTMLResponse("The form had no valid CSRF token; reload the page and try again.", status_code=403)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> Response:
        return HTMLResponse(escape(str(exc)), status_code=404 if isinstance(exc, NotFound) else 400)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return render(request, "login.html", error="")

    @app.post("/login")
    def login(request: Request, token: str = Form(""), csrf_token: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        annotator = store.annotator_for_token(token.strip()) if token.strip() else None
        if annotator is None:
            return render(request, "login.html", status=401, error="That token is not valid.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, store.start_session(annotator.id, samples.cfg.review.session_hours),
                            httponly=True, samesite="lax", secure=request.url.scheme == "https", path="/",
                            max_age=samples.cfg.review.session_hours * 3600)
        return response

    @app.post("/logout")
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        signed_in(request)
        store.end_session(request.cookies[SESSION_COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        annotator = signed_in(request)
        q = request.query_params
        queue_filter = read_filter(q.get("class", ""), q.get("style", ""), q.get("type", ""), q.get("flag", ""))
        summary = summarize(samples, store.decisions())
        mine = next((row for row in summary.annotators if row["name"] == annotator.name), None)
        return render(request, "index.html", annotator=annotator, choices=choices, filters=queue_filter.as_query(),
                      empty=bool(q.get("empty")), summary=summary, mine=mine)

    @app.post("/next")
    def next_(request: Request, csrf_token: str = Form(""), class_: str = Form("", alias="class"),
              style: str = Form(""), type_: str = Form("", alias="type"), flag: str = Form("")) -> Response:
        annotator = signed_in(request)
        check_csrf(request, csrf_token)
        return go_next(annotator, read_filter(class_, style, type_, flag))

    @app.get("/samples/{sample_id}", response_class=HTMLResponse)
    def show_sample(request: Request, sample_id: str) -> HTMLResponse:
        annotator = signed_in(request)
        sample_known(sample_id)
        q = request.query_params
        return sample_page(request, annotator, sample_id,
                           read_filter(q.get("class", ""), q.get("style", ""), q.get("type", ""), q.get("flag", "")))

    def shown_revision(nonce: str, revision: str) -> int:
        """The revision the form was made from, after checking the form's nonce."""
        if not COOKIE_VALUE.fullmatch(nonce):
            raise BadRequest("the form's nonce is missing or malformed; reload the sample page")
        if not revision.isdigit():
            raise BadRequest("the form's revision is missing; reload the sample page")
        return int(revision)

    @app.post("/samples/{sample_id}/decision")
    def decide(request: Request, sample_id: str, csrf_token: str = Form(""), nonce: str = Form(""),
               revision: str = Form(""), action: str = Form(""), reason: str = Form(""), note: str = Form(""),
               class_: str = Form("", alias="class"), style: str = Form(""), type_: str = Form("", alias="type"),
               flag: str = Form("")) -> Response:
        annotator = signed_in(request)
        check_csrf(request, csrf_token)
        sample_known(sample_id)
        queue_filter = read_filter(class_, style, type_, flag)
        shown = shown_revision(nonce, revision)
        if action not in ("accept", "reject"):
            raise BadRequest("action must be accept or reject")
        if action == "reject" and reason not in reasons:
            raise BadRequest(f"pick a reject reason from the list: {', '.join(reasons)}")
        if len(note) > MAX_NOTE_CHARS:
            raise BadRequest(f"the note is longer than {MAX_NOTE_CHARS} characters")
        store.record_decision(nonce=nonce, sample_id=sample_id, annotator_id=annotator.id, action=action,
                              reason=reason if action == "reject" else "", note=note.strip(), revision=shown)
        return go_next(annotator, queue_filter)

    @app.post("/samples/{sample_id}/edit")
    def edit(request: Request, sample_id: str, csrf_token: str = Form(""), nonce: str = Form(""),
             revision: str = Form(""), question: str = Form(""), options: str = Form(""), answer: str = Form(""),
             planning: str = Form(""), caption: str = Form(""), reasoning: str = Form(""), summary: str = Form(""),
             response: str = Form(""), note: str = Form(""), class_: str = Form("", alias="class"),
             style: str = Form(""), type_: str = Form("", alias="type"), flag: str = Form("")) -> Response:
        annotator = signed_in(request)
        check_csrf(request, csrf_token)
        sample_known(sample_id)
        queue_filter = read_filter(class_, style, type_, flag)
        shown = shown_revision(nonce, revision)
        texts = {"question": question, "answer": answer, "planning": planning, "caption": caption,
                 "reasoning": reasoning, "summary": summary, "response": response}
        if any(len(v) > MAX_FIELD_CHARS for v in [*texts.values(), options]) or len(note) > MAX_NOTE_CHARS:
            raise BadRequest(f"a field is longer than {MAX_FIELD_CHARS} characters")
        # Browsers send textarea line breaks as CRLF; the stored text uses LF like the pipeline's.
        edits: dict[str, object] = {k: v.replace("\r\n", "\n").strip() for k, v in texts.items()}
        edits["options"] = [line.strip() for line in options.replace("\r\n", "\n").split("\n") if line.strip()]
        base, base_revision = current_revision(sample_id)
        if base_revision != shown:
            return sample_page(request, annotator, sample_id, queue_filter, status=409, draft=edits,
                               errors=["someone saved a newer revision meanwhile; here it is with your text below"])
        if all(edits[k] == (base[k] if k == "options" else base[k].strip()) for k in edits):
            store.record_decision(nonce=nonce, sample_id=sample_id, annotator_id=annotator.id, action="accept",
                                  note=note.strip(), revision=shown)
            return go_next(annotator, queue_filter)
        revised, problems = revise_sample(base, edits, samples.clip(base["clip_id"]), samples.cfg)
        if revised is None:
            return sample_page(request, annotator, sample_id, queue_filter, status=422, draft=edits,
                               errors=[f"validation failed: {', '.join(problems)}; fix the text or reject the sample"])
        store.record_decision(nonce=nonce, sample_id=sample_id, annotator_id=annotator.id, action="edit",
                              note=note.strip(), revision=shown, edit_fields=stored_fields(revised))
        return go_next(annotator, queue_filter)

    def clip_file(request: Request, clip_id: str, render, media_type: str) -> Response:
        """Audio and spectrograms are looked up by a clip id of this run, never by a path from the request."""
        signed_in(request)
        if not CLIP_ID.fullmatch(clip_id) or clip_id not in samples.clip_batch:
            raise NotFound("no such clip in this run")
        return Response(render(clip_id), media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/audio/{clip_id}.wav")
    def audio(request: Request, clip_id: str) -> Response:
        return clip_file(request, clip_id, samples.audio_wav, "audio/wav")

    @app.get("/spectrogram/{clip_id}.png")
    def spectrogram(request: Request, clip_id: str) -> Response:
        return clip_file(request, clip_id, samples.spectrogram_png, "image/png")

    @app.get("/progress", response_class=HTMLResponse)
    def progress(request: Request) -> HTMLResponse:
        annotator = signed_in(request)
        return render(request, "progress.html", annotator=annotator, summary=summarize(samples, store.decisions()))

    return app
