"""The review web app: server-rendered pages (FastAPI + Jinja2) and one small script for keyboard shortcuts.

Security: every page but sign-in needs a session (a random id in an HttpOnly cookie, stored hashed);
every form carries a CSRF token: an HMAC, under the database's secret, of the session id (or, before
sign-in, of a random cookie that sign-in and sign-out replace), so a token from one session is worthless in
another. Sign-in is throttled per client address (and per annotator); the access log never shows the query
string of /login. All text from labels and the teacher is autoescaped by Jinja2 and a strict
Content-Security-Policy forbids inline script; audio and spectrograms are looked up by a clip id that must be
in the run's index, never by a path. An annotator decides only samples the queue served them or that they
opened themselves; an edit names the revision it was built on and is refused when a newer one exists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from markupsafe import escape

from cotaforge.config import RunConfig
from cotaforge.decisions import EDIT_FIELDS, apply_revision
from cotaforge.models import COT_STAGES
from cotaforge.review.db import Annotator, NotServed, ReviewStore, RevisionConflict, UnknownRevision, resolve_db_url
from cotaforge.review.queue import QueueFilter, next_sample, queue_state, remaining_for, remaining_in
from cotaforge.review.samples import SPECTROGRAM_PLOT_LEFT, SPECTROGRAM_PLOT_RIGHT, RunSamples, revise_sample, stored_fields
from cotaforge.review.summary import summarize
from cotaforge.review.throttle import Throttle
from cotaforge.store import RunDir
from cotaforge.textnorm import normalize_text, text_problems

SESSION_COOKIE = "cotaforge_session"
CSRF_COOKIE = "cotaforge_csrf"  # before sign-in only: the login form's token is bound to it
SAMPLE_ID = re.compile(r"[0-9a-f]{8,64}")
CLIP_ID = re.compile(r"[0-9a-f]{16}")
COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{20,64}")
MAX_NOTE_CHARS = 2000
MAX_FIELD_CHARS = 20_000
MAX_QUERY_CHARS = 200
UNDO_MINUTES = 10
# Sign-in: wrong tokens per client address, and sign-ins per annotator, in any minute.
SIGN_IN_FAILURES_PER_ADDRESS = 5
SIGN_INS_PER_ANNOTATOR = 30
SIGN_IN_WINDOW_S = 60.0
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
    ("a", "accept the sample (with the note beside the button, if any)"),
    ("r", "reject: opens the reasons, none chosen; 1-9 or arrows pick one, Enter confirms"),
    ("e", "edit any text field; Ctrl+Enter saves a new revision, Esc cancels"),
    ("s", "skip: give the sample back to the others and take the next one"),
    ("u", f"undo your last decision (within {UNDO_MINUTES} minutes)"),
    ("space", "play or pause the audio"),
    ("n", "next sample (from the start page)"),
    ("?", "show or hide this list"),
)
# What each validator reason code means, in words, for the page that refuses an edit.
REASON_TEXT = {
    "schema_invalid": "a field has the wrong type or is empty",
    "missing_stage": "a reasoning stage is empty",
    "repeated_stage": "a stage's tag appears twice in the text",
    "stage_order": "the stages' tags are out of order in the text",
    "assistant_text_mismatch": "a stage's text contains a tag such as <SUMMARY>; remove it",
    "stage_too_short": "a stage is too short; write at least a full sentence",
    "stage_too_long": "a stage is longer than the validator allows; shorten it",
    "ground_truth_mismatch": "the correct answer no longer matches the clip's label or facts",
    "answer_mismatch": "the answer does not match the correct option or value; for multiple choice give the letter "
                       "of the correct option",
    "options_not_distinct": "two options are the same (or there are fewer than two)",
    "options_ambiguous": "more than one option (or none) names one of the clip's labels",
    "response_mismatch": "the RESPONSE does not give the answer (the letter for multiple choice, yes/no first for "
                         "yes/no, the answer's words otherwise)",
    "summary_disagrees": "the SUMMARY does not name the answer, or names a wrong option",
    "leak_forbidden_word": "the question or reasoning uses a word that gives away where the answer came from "
                           "(such as 'label', 'metadata' or 'annotation')",
    "leak_source_id": "the question or reasoning names a file, an id or the speaker group",
    "leak_answer_in_question": "the question gives the answer away",
    "near_duplicate_question": "the question repeats another question about this clip",
    "text_not_normalized": "the text holds hidden, control or compatibility characters",
    "cot_contradicts_facts": "a number in the caption or reasoning (seconds, Hz, dBFS, onsets) is off from "
                             "the clip's measured facts",
    "cot_contradicts_timeline": "the caption or reasoning gets a count, a time or the order of the sounds wrong",
    "mixed_script_word": "a word mixes letters of different alphabets (look-alike letters)",
    "too_many_options": "there are more options than this run's multiple-choice questions have",
    "options_not_allowed": "only a multiple-choice question has options; leave the options empty",
}


class NotSignedIn(Exception):
    """The request has no valid session."""


class CsrfRejected(Exception):
    """A form arrived without the CSRF token of this browser."""


class BadRequest(Exception):
    """A form value is out of range; the message says which."""


class NotFound(BadRequest):
    """The sample or clip is not in this run."""


class Forbidden(BadRequest):
    """The annotator may not do this; the message says why and what to do."""


class Throttled(Exception):
    """Too many sign-in attempts; answered 429 with Retry-After."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class LoginQueryFilter(logging.Filter):
    """Drops the query string of /login and /logout requests from uvicorn's access log lines.

    A token pasted into a sign-in link must never reach a log file.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2]
            if "?" in path and path.split("?", 1)[0] in ("/login", "/logout"):
                record.args = (*args[:2], path.split("?", 1)[0], *args[3:])
        return True


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, LoginQueryFilter) for f in logger.filters):
        logger.addFilter(LoginQueryFilter())


def explain(codes: list[str]) -> list[str]:
    """Validator reason codes as sentences, each followed by its code."""
    return [f"{REASON_TEXT.get(code, 'the validator refused it')} ({code})" for code in dict.fromkeys(codes)]


def content_range(header: str, size: int) -> tuple[int, int] | None:
    """The (first, last) byte a `Range: bytes=...` header asks for, or None when it cannot be served.

    One range only (a list of ranges is answered with the whole file by the caller, as HTTP allows).
    """
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or not (match.group(1) or match.group(2)) or size == 0:
        return None
    if not match.group(1):  # the last N bytes
        length = int(match.group(2))
        return (max(size - length, 0), size - 1) if length else None
    first = int(match.group(1))
    last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    return (first, last) if first <= last and first < size else None


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
    app.state.failures = Throttle(SIGN_IN_FAILURES_PER_ADDRESS, SIGN_IN_WINDOW_S)
    app.state.sign_ins = Throttle(SIGN_INS_PER_ANNOTATOR, SIGN_IN_WINDOW_S)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    install_log_filter()

    def sign(value: str) -> str:
        return hmac.new(store.secret, value.encode(), hashlib.sha256).hexdigest()

    def csrf_for_session(session_id: str) -> str:
        return sign("session:" + session_id)

    def render(request: Request, template: str, status: int = 200, annotator: Annotator | None = None,
               session_id: str | None = None, **context: object) -> HTMLResponse:
        """A page whose forms carry the CSRF token of this session (or, signed out, of the sign-in cookie)."""
        session_id = session_id or getattr(request.state, "session_id", None)
        fresh = ""
        if session_id:
            token = csrf_for_session(session_id)
        else:
            cookie = request.cookies.get(CSRF_COOKIE, "")
            if not COOKIE_VALUE.fullmatch(cookie):
                cookie = fresh = secrets.token_urlsafe(32)
            token = sign("login:" + cookie)
        page = env.get_template(template).render(csrf_token=token, annotator=annotator, shortcuts=SHORTCUTS,
                                                 **context)
        response = HTMLResponse(page, status_code=status)
        if fresh:
            response.set_cookie(CSRF_COOKIE, fresh, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
        return response

    def signed_in(request: Request) -> Annotator:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        annotator = store.session_annotator(session_id) if COOKIE_VALUE.fullmatch(session_id) else None
        if annotator is None:
            raise NotSignedIn()
        request.state.session_id = session_id
        return annotator

    def check_csrf(request: Request, token: str) -> None:
        """Signed in: the token must be this session's. Signed out (sign-in form): this browser's cookie's."""
        session_id = getattr(request.state, "session_id", None)
        if session_id:
            expected = csrf_for_session(session_id)
        else:
            cookie = request.cookies.get(CSRF_COOKIE, "")
            expected = sign("login:" + cookie) if COOKIE_VALUE.fullmatch(cookie) else ""
        if not (expected and token and hmac.compare_digest(token, expected)):
            raise CsrfRejected()

    def read_filter(class_label: str, style: str, qtype: str, flag: str) -> QueueFilter:
        """Only known values filter; anything else (typos, hostile input) means no filter on that field."""
        return QueueFilter(
            class_label=class_label if class_label in choices["class"] else "",
            prompt_style=style if style in choices["style"] else "",
            question_type=qtype if qtype in choices["type"] else "",
            flag=flag if flag in choices["flag"] or flag in ("any_flag", "no_flag") else "")

    def query_filter(request: Request) -> QueueFilter:
        q = request.query_params
        return read_filter(q.get("class", ""), q.get("style", ""), q.get("type", ""), q.get("flag", ""))

    def sample_known(sample_id: str) -> None:
        if not SAMPLE_ID.fullmatch(sample_id) or sample_id not in samples.by_id:
            raise NotFound("no such sample in this run")

    def revision_of(sample_id: str, revision: int) -> dict:
        """The sample as it was at `revision`; BadRequest when the sample has no such revision."""
        sample = samples.sample(sample_id)
        if revision == 0:
            return sample
        fields = store.revision_fields(sample_id).get((sample_id, revision))
        if fields is None:
            raise BadRequest(f"sample {sample_id} has no revision {revision}; reload the sample page")
        return apply_revision(sample, fields)

    def current_revision(sample_id: str) -> tuple[dict, int]:
        """The sample as reviewers see it now: its newest revision (not withdrawn), with that number."""
        revision, fields = store.current_revision(sample_id)
        return revised(sample_id, fields), revision

    def revised(sample_id: str, fields: dict | None) -> dict:
        sample = samples.sample(sample_id)
        return apply_revision(sample, fields) if fields else sample

    def go_next(annotator: Annotator, queue_filter: QueueFilter) -> RedirectResponse:
        sample_id = next_sample(samples, store, annotator.id, queue_filter)
        query = urlencode(queue_filter.as_query())
        if sample_id is None:
            return RedirectResponse(f"/?{urlencode({**queue_filter.as_query(), 'empty': '1'})}", status_code=303)
        return RedirectResponse(f"/samples/{sample_id}" + (f"?{query}" if query else ""), status_code=303)

    def sample_page(request: Request, annotator: Annotator, sample_id: str, queue_filter: QueueFilter,
                    status: int = 200, errors: list[str] | None = None, draft: dict | None = None,
                    draft_revision: int | None = None, notices: list[str] | None = None,
                    session_id: str | None = None) -> HTMLResponse:
        history, revision, fields = store.sample_history(sample_id)
        sample = revised(sample_id, fields)
        entry = samples.by_id[sample_id]
        clip = samples.clip(entry.clip_id)
        validation = json.loads(sample["validation"] or "{}")
        flags = list(validation.get("flags", []))
        state = queue_state(samples, store, annotator.id, queue_filter)
        mine = [d for d in history if d.annotator == annotator.name and d.action != "undo"]
        undoable = store.undoable(annotator.id, UNDO_MINUTES * 60.0)
        return render(
            request, "sample.html", status=status, annotator=annotator, session_id=session_id, sample=sample,
            revision=revision, entry=entry, clip=clip, facts=clip["facts"], flags=flags,
            flagged_facts={FLAG_FACTS[f] for f in flags if f in FLAG_FACTS},
            metadata=json.loads(sample["metadata"] or "{}"), stages=COT_STAGES,
            letters=[chr(65 + i) for i in range(len(sample["options"]))], reasons=reasons,
            nonce=secrets.token_urlsafe(18), filters=queue_filter.as_query(), errors=errors or [],
            notices=notices or [], draft=draft or {name: sample[name] for name in EDIT_FIELDS},
            draft_revision=revision if draft_revision is None else draft_revision,
            my_last=mine[-1] if mine else None, history=history, served=sample_id in state.mine,
            left=remaining_in(samples, state, queue_filter), undoable=undoable,
            undo_minutes=UNDO_MINUTES, plot_left=SPECTROGRAM_PLOT_LEFT, plot_right=SPECTROGRAM_PLOT_RIGHT,
            duration_s=float(clip["facts"].get("duration_s") or sample["duration_s"]))

    def client_address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

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
        # A decision sent after the sign-in ran out: signing in again leads back to its sample.
        match = re.fullmatch(r"/samples/([0-9a-f]{8,64})/[a-z]+", request.url.path)
        return_to = match.group(1) if match and match.group(1) in samples.by_id else ""
        return render(request, "login.html", status=401, error="Your sign-in has expired or is missing: sign in "
                      "again" + (" and decide the sample again." if return_to else "."), draft=None,
                      return_to=return_to, draft_revision="")

    @app.exception_handler(CsrfRejected)
    async def csrf_rejected(_request: Request, _exc: CsrfRejected) -> Response:
        return HTMLResponse("The form had no valid CSRF token for this sign-in; reload the page and try again.",
                            status_code=403)

    @app.exception_handler(Throttled)
    async def throttled(_request: Request, exc: Throttled) -> Response:
        return HTMLResponse(f"Too many sign-in attempts; try again in {exc.retry_after_s} s.", status_code=429,
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> Response:
        status = 404 if isinstance(exc, NotFound) else 403 if isinstance(exc, Forbidden) else 400
        return HTMLResponse(escape(str(exc)), status_code=status)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return render(request, "login.html", error="", draft=None, return_to="", draft_revision="")

    @app.post("/login")
    def login(request: Request, token: str = Form(""), csrf_token: str = Form(""), return_to: str = Form(""),
              draft_revision: str = Form(""), question: str | None = Form(None), options: str = Form(""),
              answer: str = Form(""), planning: str = Form(""), caption: str = Form(""), reasoning: str = Form(""),
              summary: str = Form(""), response: str = Form(""), note: str = Form("")) -> Response:
        check_csrf(request, csrf_token)
        address = "address:" + client_address(request)
        wait = app.state.failures.retry_after(address)
        if wait:
            raise Throttled(wait)
        annotator = store.annotator_for_token(token.strip()) if token.strip() else None
        draft = None
        if question is not None:
            draft = {"question": question, "answer": answer, "planning": planning, "caption": caption,
                     "reasoning": reasoning, "summary": summary, "response": response, "note": note,
                     "options": [line for line in options.replace("\r\n", "\n").split("\n") if line.strip()]}
        if annotator is None:
            app.state.failures.hit(address)
            return render(request, "login.html", status=401, error="That token is not valid.", draft=draft,
                          return_to=return_to, draft_revision=draft_revision)
        wait = app.state.sign_ins.retry_after(f"annotator:{annotator.id}")
        if wait:
            raise Throttled(wait)
        app.state.sign_ins.hit(f"annotator:{annotator.id}")
        app.state.failures.clear(address)
        session_id = store.start_session(annotator.id, samples.cfg.review.session_hours)
        if return_to and SAMPLE_ID.fullmatch(return_to) and return_to in samples.by_id and draft is not None:
            # Signed in again after the session ran out mid-edit: the draft comes back in the edit form.
            result: Response = sample_page(
                request, annotator, return_to, QueueFilter(), draft=draft, session_id=session_id,
                draft_revision=int(draft_revision) if draft_revision.isdigit() else None,
                notices=["You are signed in again. Your edit is below, not saved yet: check it and save."])
        else:
            target = f"/samples/{return_to}" if return_to and SAMPLE_ID.fullmatch(return_to) else "/"
            result = RedirectResponse(target, status_code=303)
        result.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="lax",
                          secure=request.url.scheme == "https", path="/",
                          max_age=samples.cfg.review.session_hours * 3600)
        result.delete_cookie(CSRF_COOKIE, path="/")  # the sign-in form's token dies with it
        return result

    @app.post("/logout")
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        signed_in(request)
        check_csrf(request, csrf_token)
        store.end_session(request.cookies[SESSION_COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        annotator = signed_in(request)
        q = request.query_params
        queue_filter = query_filter(request)
        query = q.get("q", "")[:MAX_QUERY_CHARS]
        found = samples.search(query) if query.strip() else []
        summary = summarize(samples, store.decisions())
        mine = next((row for row in summary.annotators if row["name"] == annotator.name), None)
        return render(request, "index.html", annotator=annotator, choices=choices, filters=queue_filter.as_query(),
                      empty=bool(q.get("empty")), summary=summary, mine=mine, query=query, found=found,
                      searched=bool(query.strip()), left=remaining_for(samples, store, annotator.id, queue_filter),
                      undoable=store.undoable(annotator.id, UNDO_MINUTES * 60.0), nonce=secrets.token_urlsafe(18))

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
        notices = ["Your decision was withdrawn: decide this sample again."] if request.query_params.get("undone") else []
        return sample_page(request, annotator, sample_id, query_filter(request), notices=notices)

    @app.post("/samples/{sample_id}/open")
    def open_sample(request: Request, sample_id: str, csrf_token: str = Form("")) -> Response:
        """Take a sample found by search (or listed on the start page) for review, beyond the queue's plan."""
        annotator = signed_in(request)
        check_csrf(request, csrf_token)
        sample_known(sample_id)
        store.open_sample(sample_id, annotator.id)
        return RedirectResponse(f"/samples/{sample_id}", status_code=303)

    @app.post("/samples/{sample_id}/skip")
    def skip(request: Request, sample_id: str, csrf_token: str = Form(""), class_: str = Form("", alias="class"),
             style: str = Form(""), type_: str = Form("", alias="type"), flag: str = Form("")) -> Response:
        annotator = signed_in(request)
        check_csrf(request, csrf_token)
        sample_known(sample_id)
        store.skip(sample_id, annotator.id)
        return go_next(annotator, read_filter(class_, style, type_, flag))

    @app.post("/undo")
    def undo(request: Request, csrf_token: str = Form(""), nonce: str = Form("")) -> Response:
        annotator = signed_in(request)
        check_csrf(request, csrf_token)
        if not COOKIE_VALUE.fullmatch(nonce):
            raise BadRequest("the form's nonce is missing or malformed; reload the page")
        undone = store.undo_last(nonce=nonce, annotator_id=annotator.id, window_s=UNDO_MINUTES * 60.0)
        if undone is None:
            return HTMLResponse(f"Nothing to undo: only your own last decision of the past {UNDO_MINUTES} minutes "
                                "can be undone (once per press). <a href=\"/\">Back</a>", status_code=409)
        return RedirectResponse(f"/samples/{undone.sample_id}?undone=1", status_code=303)

    def shown_revision(nonce: str, revision: str) -> int:
        """The revision the form was made from, after checking the form's nonce."""
        if not COOKIE_VALUE.fullmatch(nonce):
            raise BadRequest("the form's nonce is missing or malformed; reload the sample page")
        if not revision.isdigit() or len(revision) > 9:
            raise BadRequest("the form's revision is missing; reload the sample page")
        return int(revision)

    def require_served(annotator: Annotator, sample_id: str) -> None:
        if not store.is_served(sample_id, annotator.id):
            raise Forbidden("This sample was not served to you. Take samples with Next sample, or open one from "
                            "search on the start page first.")

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
        try:
            store.record_decision(nonce=nonce, sample_id=sample_id, annotator_id=annotator.id, action=action,
                                  reason=reason if action == "reject" else "", note=normalize_text(note).strip(),
                                  revision=shown, require_served=True)
        except UnknownRevision as exc:
            raise BadRequest(str(exc)) from exc
        except RevisionConflict as exc:
            return HTMLResponse(f"Not saved: revision {shown}, which you were deciding on, was withdrawn; revision "
                                f"{exc.newest} is what stands now. <a href=\"/samples/{sample_id}\">Reload the "
                                "sample</a> and decide again.", status_code=409)
        except NotServed as exc:
            raise Forbidden(str(exc)) from exc
        return go_next(annotator, queue_filter)

    @app.post("/samples/{sample_id}/edit")
    def edit(request: Request, sample_id: str, csrf_token: str = Form(""), nonce: str = Form(""),
             revision: str = Form(""), question: str = Form(""), options: str = Form(""), answer: str = Form(""),
             planning: str = Form(""), caption: str = Form(""), reasoning: str = Form(""), summary: str = Form(""),
             response: str = Form(""), note: str = Form(""), class_: str = Form("", alias="class"),
             style: str = Form(""), type_: str = Form("", alias="type"), flag: str = Form("")) -> Response:
        texts = {"question": question, "answer": answer, "planning": planning, "caption": caption,
                 "reasoning": reasoning, "summary": summary, "response": response}
        if any(len(v) > MAX_FIELD_CHARS for v in [*texts.values(), options]) or len(note) > MAX_NOTE_CHARS:
            raise BadRequest(f"a field is longer than {MAX_FIELD_CHARS} characters")
        # Browsers send textarea line breaks as CRLF; the stored text uses LF like the pipeline's.
        edits: dict[str, object] = {k: v.replace("\r\n", "\n").strip() for k, v in texts.items()}
        edits["options"] = [line.strip() for line in options.replace("\r\n", "\n").split("\n") if line.strip()]
        try:
            annotator = signed_in(request)
        except NotSignedIn:
            # The session ran out while the annotator was writing: keep the draft and ask to sign in again.
            known = sample_id if SAMPLE_ID.fullmatch(sample_id) and sample_id in samples.by_id else ""
            return render(request, "login.html", status=401, draft={**edits, "note": note}, return_to=known,
                          draft_revision=revision if revision.isdigit() else "",
                          error="Your sign-in expired while you were editing. Your edit is kept below: sign in "
                                "again and it comes back in the edit form, not yet saved.")
        check_csrf(request, csrf_token)
        sample_known(sample_id)
        queue_filter = read_filter(class_, style, type_, flag)
        shown = shown_revision(nonce, revision)
        require_served(annotator, sample_id)
        base = revision_of(sample_id, shown)

        def refuse(status: int, errors: list[str], draft: dict, draft_revision: int | None = None) -> HTMLResponse:
            return sample_page(request, annotator, sample_id, queue_filter, status=status, draft=draft,
                               errors=errors, draft_revision=draft_revision)

        hidden = [f"{name}: {p.detail}" for name, value in edits.items()
                  for text in (value if isinstance(value, list) else [value]) for p in text_problems(text)]
        if hidden:
            cleaned = {k: [normalize_text(o) for o in v] if isinstance(v, list) else normalize_text(v)
                       for k, v in edits.items()}
            return refuse(422, ["The edit was not saved: it contains text that cannot enter the dataset. "
                                "Hidden and compatibility characters have been removed from the form below; "
                                "retype any word with look-alike letters, then save again.", *hidden],
                          cleaned, shown)
        _, newest = current_revision(sample_id)
        if newest != shown:
            return refuse(409, [f"Not saved: someone saved revision {newest} while you were editing revision "
                                f"{shown}. The page shows revision {newest}; your text is in the form below. "
                                "Merge what you want to keep and save again, or reject."], edits, newest)
        if all(edits[k] == (base[k] if k == "options" else base[k].strip()) for k in edits):
            try:
                store.record_decision(nonce=nonce, sample_id=sample_id, annotator_id=annotator.id, action="accept",
                                      note=normalize_text(note).strip(), revision=shown, require_served=True)
            except NotServed as exc:
                raise Forbidden(str(exc)) from exc
            return go_next(annotator, queue_filter)
        revised, problems = revise_sample(base, edits, samples.clip(base["clip_id"]), samples.cfg)
        if revised is None:
            return refuse(422, ["The edit was not saved because the validator refused it; fix the text or reject "
                                "the sample:", *explain(problems)], edits, shown)
        try:
            store.record_decision(nonce=nonce, sample_id=sample_id, annotator_id=annotator.id, action="edit",
                                  note=normalize_text(note).strip(), revision=shown, edit_fields=stored_fields(revised),
                                  require_served=True)
        except RevisionConflict as exc:
            return refuse(409, [f"Not saved: someone saved revision {exc.newest} while you were editing revision "
                                f"{shown}. The page shows revision {exc.newest}; your text is in the form below. "
                                "Merge what you want to keep and save again, or reject."], edits, exc.newest)
        except NotServed as exc:
            raise Forbidden(str(exc)) from exc
        return go_next(annotator, queue_filter)

    def clip_known(request: Request, clip_id: str) -> None:
        """Audio and spectrograms are looked up by a clip id of this run, never by a path from the request."""
        signed_in(request)
        if not CLIP_ID.fullmatch(clip_id) or clip_id not in samples.clip_batch:
            raise NotFound("no such clip in this run")

    @app.get("/audio/{clip_id}.wav")
    def audio(request: Request, clip_id: str) -> Response:
        """The clip's WAV; a `Range: bytes=...` request gets 206 and just those bytes, so players can seek."""
        clip_known(request, clip_id)
        data = samples.audio_wav(clip_id)
        headers = {"Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes"}
        asked = request.headers.get("range")
        if asked is None or "," in asked:
            return Response(data, media_type="audio/wav", headers=headers)
        span = content_range(asked, len(data))
        if span is None:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
        first, last = span
        return Response(data[first:last + 1], status_code=206, media_type="audio/wav",
                        headers={**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"})

    @app.get("/spectrogram/{clip_id}.png")
    def spectrogram(request: Request, clip_id: str) -> Response:
        clip_known(request, clip_id)
        return Response(samples.spectrogram_png(clip_id), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/progress", response_class=HTMLResponse)
    def progress(request: Request) -> HTMLResponse:
        annotator = signed_in(request)
        q = request.query_params
        view = q.get("view", "annotators") if q.get("view") in ("annotators", "cells") else "annotators"
        summary = summarize(samples, store.decisions())
        rows = summary.annotators if annotator.admin else [r for r in summary.annotators if r["name"] == annotator.name]
        pairs = summary.pairs if annotator.admin else [p for p in summary.pairs if annotator.name in (p["a"], p["b"])]
        table = rows if view == "annotators" else summary.cells
        columns = list(table[0]) if table else []
        sort = q.get("sort", "")
        descending = q.get("order", "asc") == "desc"
        if sort in columns:
            # Missing rates (None) sort last whichever the direction.
            present = [r for r in table if r[sort] is not None]
            table = sorted(present, key=lambda r: r[sort], reverse=descending) + [r for r in table if r[sort] is None]
        return render(request, "progress.html", annotator=annotator, summary=summary, view=view, rows=table,
                      pairs=pairs, sort=sort, order="desc" if descending else "asc")

    return app
