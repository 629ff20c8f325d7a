"""Label Studio tasks JSON: export the run's samples (with decisions) and import annotations back as decisions.

A task's `data` holds the sample's text and an `audio` URL (`PREFIX + CLIP_ID.wav`); `export_tasks` also
writes the labeling config (`<out>.xml`) to paste into the Label Studio project. An annotation's `result`
uses these controls: `decision` (choices accept / reject / edit), `reason` (choices of
`review.reject_reasons`), `note` (text), `edit_<field>` (text: the new text of a field; options one per
line) and `revision` (number: the revision the decision was made on, or the one an edit created).

Label Studio matches an annotation's `completed_by` to its users by e-mail, so each annotation names its
annotator as `{"email": ...}`: the e-mail given with `review add-annotator NAME --email`, else
`NAME@DOMAIN` with `--email-domain` (then recorded as theirs); an export with decisions by an annotator who has neither is refused.
Annotations go out with `ground_truth: false` (Label Studio makes an imported annotation ground truth unless
told otherwise). Label Studio keeps an annotation's result, `was_cancelled`, `ground_truth`, `lead_time` and
`id` (as its import id) and drops `created_at` (the import time replaces it).

Importing records each annotation as a decision of annotator `completed_by` (an e-mail, mapped back to
the annotator who has it, a name, or `labelstudio-<id>`). Edits are validated like edits in the app; an annotation that fails is skipped and
reported. Re-importing a file adds nothing: each annotation has a deterministic nonce, and a decision the
annotator's latest one already equals is not stored again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import quoteattr

from cotaforge.config import stable_hash
from cotaforge.decisions import EDIT_FIELDS, apply_revision, latest_decisions
from cotaforge.review.db import EMAIL_PATTERN, NAME_PATTERN, ReviewStore, RevisionConflict, UnknownRevision
from cotaforge.review.samples import RunSamples, revise_sample, stored_fields
from cotaforge.store import write_text_atomic

TO_NAME = "audio"


@dataclass
class ImportReport:
    recorded: int = 0
    already: int = 0
    problems: list[str] = field(default_factory=list)


def labeling_config(reject_reasons: list[str]) -> str:
    """The Label Studio labeling config matching the exported tasks."""
    texts = "\n".join(f'  <Header value="{f.upper()}"/>\n  <Text name="show_{f}" value="${f}"/>'
                      for f in ("question", "options", "answer", "planning", "caption", "reasoning", "summary",
                                "response"))
    reasons = "".join(f"\n    <Choice value={quoteattr(r)}/>" for r in reject_reasons)
    edits = "\n".join(f'  <TextArea name="edit_{f}" toName="{TO_NAME}" maxSubmissions="1" editable="true" '
                      f'placeholder="new {f} (leave empty to keep)"/>' for f in EDIT_FIELDS)
    return f"""<View>
  <Audio name="{TO_NAME}" value="$audio"/>
  <Text name="facts" value="$facts"/>
{texts}
  <Choices name="decision" toName="{TO_NAME}" choice="single" required="true">
    <Choice value="accept"/>
    <Choice value="reject"/>
    <Choice value="edit"/>
  </Choices>
  <Choices name="reason" toName="{TO_NAME}" choice="single">{reasons}
  </Choices>
  <TextArea name="note" toName="{TO_NAME}" maxSubmissions="1"/>
{edits}
  <Number name="revision" toName="{TO_NAME}"/>
</View>
"""


def _result(name: str, kind: str, value: object) -> dict:
    key = {"choices": "choices", "textarea": "text", "number": "number"}[kind]
    return {"from_name": name, "to_name": TO_NAME, "type": kind, "value": {key: value}}


def _edit_text(name: str, value: object) -> str:
    return "\n".join(value) if name == "options" else str(value)


def annotator_emails(store: ReviewStore, names: set[str], email_domain: str | None) -> dict[str, str]:
    """The e-mail of each annotator in `names`: their own, else NAME@email_domain (then recorded as theirs,
    so importing Label Studio's annotations maps it back to them).

    ValueError naming the annotators with neither, and what to do.
    """
    if email_domain is not None and not EMAIL_PATTERN.fullmatch(f"x@{email_domain}"):
        raise ValueError(f"--email-domain {email_domain!r} is not a domain like example.org")
    known = store.emails()
    emails = {name: known.get(name) or (f"{name}@{email_domain}" if email_domain else "") for name in names}
    missing = sorted(name for name, email in emails.items() if not email)
    if missing:
        raise ValueError(f"Label Studio matches annotators by e-mail, and {', '.join(missing)} "
                         f"{'has' if len(missing) == 1 else 'have'} none: give each one with "
                         "`cotaforge review add-annotator NAME --run RUN --email ADDRESS`, or pass --email-domain")
    unusable = sorted(f"{name} ({email})" for name, email in emails.items() if not EMAIL_PATTERN.fullmatch(email))
    if unusable:
        raise ValueError(f"not an e-mail address: {', '.join(unusable)}; set one with add-annotator NAME --email")
    for name in sorted(set(emails) - set(known)):
        store.add_annotator(name, email=emails[name])
    return emails


def export_tasks(samples: RunSamples, store: ReviewStore, out: Path, audio_prefix: str = "audio/",
                 audio_dir: Path | None = None, email_domain: str | None = None) -> int:
    """Write one task per balanced sample to `out` (and the labeling config beside it); return the count.

    ValueError when an annotator with decisions has no e-mail and no `email_domain` is given.
    """
    latest = latest_decisions(store.decisions())
    emails = annotator_emails(store, {name for by in latest.values() for name in by}, email_domain)
    revision_fields = store.revision_fields()
    tasks = []
    for index, entry in enumerate(samples.entries, start=1):
        sample = samples.sample(entry.sample_id)
        revisions = [rev for sid, rev in revision_fields if sid == entry.sample_id]
        shown = max(revisions, default=0)
        current = apply_revision(sample, revision_fields[(entry.sample_id, shown)]) if shown else sample
        clip = samples.clip(entry.clip_id)
        data = {
            "sample_id": entry.sample_id, "clip_id": entry.clip_id, "audio": f"{audio_prefix}{entry.clip_id}.wav",
            "revision": shown, "class_label": sample["class_label"], "prompt_style": sample["prompt_style"],
            "question_type": sample["question_type"], "labels": "; ".join(sample["labels"]),
            "flags": ", ".join(entry.flags),
            "facts": "; ".join(f"{k} {v}" for k, v in clip["facts"].items() if v is not None),
            **{name: _edit_text(name, current[name]) for name in EDIT_FIELDS},
        }
        annotations = []
        for name, decision in sorted(latest.get(entry.sample_id, {}).items()):
            result = [_result("decision", "choices", [decision.action]),
                      _result("revision", "number", decision.revision)]
            if decision.reason:
                result.append(_result("reason", "choices", [decision.reason]))
            if decision.note:
                result.append(_result("note", "textarea", [decision.note]))
            if decision.action == "edit":
                fields = revision_fields[(entry.sample_id, decision.revision)]
                result += [_result(f"edit_{f}", "textarea", [_edit_text(f, fields[f])]) for f in EDIT_FIELDS]
            annotations.append({"id": decision.id, "completed_by": {"email": emails[name]}, "result": result,
                                "created_at": decision.created_at, "was_cancelled": False, "ground_truth": False})
        tasks.append({"id": index, "data": data, "annotations": annotations})
        if audio_dir is not None:
            audio_dir.mkdir(parents=True, exist_ok=True)
            (audio_dir / f"{entry.clip_id}.wav").write_bytes(samples.audio_wav(entry.clip_id))
    write_text_atomic(out, json.dumps(tasks, ensure_ascii=False, indent=1))
    write_text_atomic(out.with_suffix(".xml"), labeling_config(samples.cfg.review.reject_reasons))
    return len(tasks)


def _annotator_name(completed_by: object, by_email: dict[str, str]) -> str:
    """The annotator an annotation names: the one with its e-mail, else the e-mail, name or id itself."""
    if isinstance(completed_by, dict):
        for key in ("email", "username", "name"):
            if completed_by.get(key):
                return by_email.get(str(completed_by[key]).casefold(), str(completed_by[key]))
        completed_by = completed_by.get("id", "unknown")
    if isinstance(completed_by, int):
        return f"labelstudio-{completed_by}"
    return str(completed_by)


def _timestamp(value: object) -> str | None:
    """Label Studio's ISO time as the database's fixed-width UTC text, or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read_result(result: list) -> dict[str, object]:
    """{control name: value} from an annotation's result list (first choice, joined text, number)."""
    values: dict[str, object] = {}
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue
        name, value = item.get("from_name"), item["value"]
        if "choices" in value and value["choices"]:
            values[name] = str(value["choices"][0])
        elif "text" in value:
            text = value["text"]
            values[name] = "\n".join(map(str, text)) if isinstance(text, list) else str(text)
        elif "number" in value:
            values[name] = value["number"]
    return values


def import_tasks(samples: RunSamples, store: ReviewStore, path: Path) -> ImportReport:
    """Record the annotations of a Label Studio export as decisions; see the module docstring."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable JSON file of Label Studio tasks: {exc}") from exc
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: expected a JSON list of tasks (Label Studio's JSON export)")
    report = ImportReport()
    by_email = {email.casefold(): name for name, email in store.emails().items()}
    for task in tasks:
        data = task.get("data", {}) if isinstance(task, dict) else {}
        sample_id = str(data.get("sample_id", ""))
        if sample_id not in samples.by_id:
            report.problems.append(f"task {task.get('id') if isinstance(task, dict) else '?'}: sample "
                                   f"{sample_id!r} is not in this run")
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        # Edits create revisions that later accepts refer to, so decisions go in the order they were made.
        annotations.sort(key=lambda a: _timestamp(a.get("created_at")) or "")
        revision_map: dict[int, int] = {0: 0}
        for annotation in annotations:
            problem = _import_annotation(samples, store, sample_id, data, annotation, revision_map, report, by_email)
            if problem:
                report.problems.append(f"sample {sample_id}, annotation {annotation.get('id')}: {problem}")
    return report


def _import_annotation(samples: RunSamples, store: ReviewStore, sample_id: str, data: dict, annotation: dict,
                       revision_map: dict[int, int], report: ImportReport, by_email: dict[str, str]) -> str | None:
    """Record one annotation; return a problem message instead when it cannot be."""
    name = _annotator_name(annotation.get("completed_by"), by_email)
    if not NAME_PATTERN.fullmatch(name):
        return f"annotator {name!r} is not a usable name"
    values = _read_result(annotation.get("result") or [])
    action = str(values.get("decision", ""))
    edits = {f: values[f"edit_{f}"] for f in EDIT_FIELDS if str(values.get(f"edit_{f}", "")).strip()}
    if edits and action != "reject":
        action = "edit"
    if action not in ("accept", "reject", "edit"):
        return "no decision (choose accept, reject or edit)"
    reason = str(values.get("reason", ""))
    if action == "reject" and reason not in samples.cfg.review.reject_reasons:
        return f"reject reason {reason!r} is not one of {', '.join(samples.cfg.review.reject_reasons)}"
    note = str(values.get("note", "")).strip()
    revision_fields = store.revision_fields(sample_id)
    latest_revision = max((rev for _, rev in revision_fields), default=0)

    def resolve(stated: object) -> int:
        """A revision number of the export as one of this database (unknown ones: the newest here)."""
        number = int(stated) if isinstance(stated, (int, float)) else 0
        return revision_map.get(number, number if number <= latest_revision else latest_revision)

    revision = resolve(values.get("revision", data.get("revision", 0)))

    edit_fields, shown = None, revision
    if action == "edit":
        if not edits:
            return "an edit with no edited text (fill an edit_<field> box)"
        original = samples.sample(sample_id)
        shown = resolve(data.get("revision", 0))  # the text the annotator edited
        base = apply_revision(original, revision_fields[(sample_id, shown)]) if shown else original
        parsed = {f: ([line.strip() for line in str(v).split("\n") if line.strip()] if f == "options" else str(v).strip())
                  for f, v in edits.items()}
        revised, problems = revise_sample(base, parsed, samples.clip(original["clip_id"]), samples.cfg)
        if revised is None:
            return f"the edit fails validation: {', '.join(problems)}"
        edit_fields = stored_fields(revised)

    previous = latest_decisions(store.decisions(sample_id)).get(sample_id, {}).get(name)
    if previous and previous.action == action and previous.reason == (reason if action == "reject" else "") \
            and previous.note == note and (action != "edit" or revision_fields.get((sample_id, previous.revision)) == edit_fields):
        report.already += 1
        if action == "edit" and isinstance(values.get("revision"), (int, float)):
            revision_map[int(values["revision"])] = previous.revision
        return None
    nonce = "ls:" + stable_hash([sample_id, name, annotation.get("id"), annotation.get("created_at"),
                                 annotation.get("result")], length=40)
    try:
        recorded, stored_revision = store.record_decision(
            nonce=nonce, sample_id=sample_id, annotator_id=store.ensure_annotator(name), action=action,
            reason=reason if action == "reject" else "", note=note, revision=shown if action == "edit" else revision,
            edit_fields=edit_fields, source="labelstudio", created_at=_timestamp(annotation.get("created_at")))
    except RevisionConflict as exc:
        return f"{exc}; export again and redo this edit on the newest text"
    except UnknownRevision as exc:
        return str(exc)
    if action == "edit" and isinstance(values.get("revision"), (int, float)):
        revision_map[int(values["revision"])] = stored_revision
    if recorded:
        report.recorded += 1
    else:
        report.already += 1
    return None
