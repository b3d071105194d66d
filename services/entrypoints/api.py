"""drip's HTTP API for clinic systems and analysts (§1, §3, §7): FastAPI, OpenAPI 3.1.

Every call carries an API key (`X-API-Key: drip_<id>_<secret>`, `drip clinic key create`)
that belongs to one clinic and has a role: `analyst` reads, `admin` also changes. A key
only ever sees its own clinic: another clinic's campaign, enrollment or patient is a 404,
exactly like one that does not exist. Errors: 401 no or bad key, 403 a read-only key that
tries to change something, 404 unknown id, 409 a conflict with the current state, 422 an
invalid request naming the field.

Commands go through the same application (and so the same domain events) as the Kafka
input; reads come from the read models (projections/analytics.py, campaign_stats.py). The
API never writes a read-model table.
"""


import asyncio
import csv
import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar
from uuid import UUID

import yaml
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from psycopg import Cursor
from psycopg_pool import ConnectionPool
from pydantic import AwareDatetime, BaseModel, Field

from contracts.campaigns import CampaignSpec
from domain.campaign import Campaign, CampaignDefinition
from domain.enrollment import Enrollment, EnrollmentStatus
from domain.errors import DomainError
from domain.schedule import APPOINTMENT_STARTS_AT
from domain.stop_rules import StopReason
from projections import analytics, api_keys, campaign_stats, dead_letters, jobs
from projections.api_keys import Principal
from services.application.app import Conflict, DripApplication, UnknownEnrollment, event_time
from services.application.catalog import UnknownCampaign
from services.application.definitions import (
    DefinitionError,
    compile_campaign,
    definition_diff,
    plain,
)
from services.application.preview import preview
from services.entrypoints import pages
from services.entrypoints.http import serve_http
from services.entrypoints.jobs import Jobs
from services.settings import Settings

T = TypeVar("T")
GALLERY = Path(__file__).resolve().parents[2] / "campaigns"
MAX_PAGE = 500
MAX_UPLOAD_BYTES = 10 << 20


class Action(StrEnum):
    activate = "activate"
    pause = "pause"
    resume = "resume"
    archive = "archive"


class EnrollRequest(BaseModel):
    """Enroll one patient (§3). For an appointment campaign, give the appointment."""

    campaign_id: UUID
    patient_id: str = Field(min_length=1, max_length=200)
    appointment_id: str | None = Field(None, min_length=1, max_length=200)
    starts_at: AwareDatetime | None = Field(None, description="The appointment's start "
                                            "(ISO-8601 with offset)")


class BacktestRequest(BaseModel):
    """Campaign definitions (drafts welcome) to run over the data set's history."""

    campaigns: list[CampaignSpec] = Field(min_length=1, max_length=20)
    limit: int = Field(2000, ge=1, le=200_000, description="The first N rows of the data set")


class PreviewRequest(BaseModel):
    patient_id: str = Field(min_length=1, max_length=200)
    at: AwareDatetime | None = Field(None, description="Enrollment time (default now)")
    starts_at: AwareDatetime | None = Field(None, description="appointment.starts_at "
                                            "(default 7 days after `at`)")


class Problem(BaseModel):
    """An error: what went wrong, in words."""

    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No API key, or an invalid or revoked one"},
    403: {"model": Problem, "description": "A read-only (analyst) key asked for a change"},
    404: {"model": Problem, "description": "No such campaign, enrollment or version for "
          "this key's clinic"},
    409: {"model": Problem, "description": "Contradicts the current state (lifecycle, "
          "campaign not active)"},
}


CSV: dict[int | str, dict[str, Any]] = {
    200: {"description": "JSON rows; with `format=csv`, the same rows as CSV",
          "content": {"text/csv": {"schema": {"type": "string"}}}}}


def create_api(settings: Settings, app: DripApplication, pool: ConnectionPool,
               extra: list[APIRouter] | None = None) -> FastAPI:
    """The API over this application and pool; `extra` routers (metrics, pages) join it."""
    api = FastAPI(title="drip", version="1", summary="Event-sourced drip campaigns (§1-§9)",
                  description=__doc__)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="drip_<id>_<secret>, from `drip clinic key create`")

    def run(read: Callable[[Cursor[Any]], T]) -> T:
        with pool.connection() as conn, conn.cursor() as cur:
            return read(cur)

    async def principal(request: Request,
                        key: Annotated[str | None, Depends(key_header)] = None) -> Principal:
        key = key or request.cookies.get("drip_key")
        found = await asyncio.to_thread(run, lambda cur: api_keys.authenticate(cur, key or ""))
        if found is None:
            raise HTTPException(401, "missing or invalid API key",
                                headers={"WWW-Authenticate": "X-API-Key"})
        return found

    async def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.can_write:
            raise HTTPException(403, "this key is read-only (role analyst)")
        return who

    Reader = Annotated[Principal, Depends(principal)]
    Admin = Annotated[Principal, Depends(admin)]

    def campaign_of(who: Principal, campaign_id: UUID) -> Campaign:
        try:
            campaign = app.campaigns.aggregate(campaign_id)
        except UnknownCampaign:
            campaign = None
        if campaign is None or campaign.definition.clinic_id != who.clinic_id:
            raise HTTPException(404, f"no campaign {campaign_id}")
        return campaign

    def compiled(who: Principal, spec: CampaignSpec) -> CampaignDefinition:
        if spec.clinic != who.clinic_id:
            raise HTTPException(422, [{"loc": ["body", "clinic"], "type": "value_error",
                                       "msg": f"this key's clinic is {who.clinic_id!r}"}])
        try:
            return compile_campaign(spec, app.campaigns.clinic(spec.clinic), "body")
        except DefinitionError as exc:
            raise HTTPException(422, [{"loc": ["body"], "msg": p, "type": "value_error"}
                                      for p in exc.problems]) from None

    v1 = APIRouter(prefix="/v1", responses=ERRORS)
    work = Jobs(settings, app, pool)
    extra = [*(extra or []), pages.router(app, run, principal)]

    # -- campaigns -------------------------------------------------------------------
    @v1.get("/campaigns", tags=["campaigns"])
    async def list_campaigns(who: Reader, status: str | None = None,
                             kind: str | None = None) -> list[dict[str, Any]]:
        """The clinic's campaigns: id, name, kind, trigger, status now, latest version."""
        now = datetime.now(UTC)
        out = [_summary(c, now) for c in app.campaigns.all()
               if c.definition.clinic_id == who.clinic_id]
        return sorted((c for c in out if (status is None or c["status"] == status)
                       and (kind is None or c["kind"] == kind)), key=lambda c: c["name"])

    @v1.post("/campaigns", tags=["campaigns"], status_code=201,
             responses={200: {"description": "a new version, or unchanged"}})
    async def apply_campaign(spec: CampaignSpec, who: Admin,
                             response: Response) -> dict[str, Any]:
        """Apply a definition (§2): a new campaign is a draft (201); a changed one becomes
        version n+1 and enrollments in flight keep theirs (200)."""
        definition = compiled(who, spec)
        try:
            campaign, outcome = await asyncio.to_thread(app.apply_campaign, definition)
        except DomainError as exc:
            raise HTTPException(409, str(exc)) from None
        if outcome != "defined":
            response.status_code = 200
        return {"outcome": outcome, **_summary(campaign, datetime.now(UTC))}

    @v1.get("/campaigns/{campaign_id}", tags=["campaigns"])
    async def get_campaign(campaign_id: UUID, who: Reader,
                           version: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        """A campaign's definition as recorded (latest, or `version`), its status, versions."""
        campaign = campaign_of(who, campaign_id)
        if version is not None and version not in campaign.versions:
            raise HTTPException(404, f"no version {version} of campaign {campaign_id}")
        d = campaign.at_version(version) if version else campaign.definition
        return {**_summary(campaign, datetime.now(UTC)), "version": d.version,
                "versions": sorted(campaign.versions), "definition": plain(d.to_dict())}

    @v1.post("/campaigns/{campaign_id}/diff", tags=["campaigns"])
    async def diff_campaign(campaign_id: UUID, spec: CampaignSpec,
                            who: Reader) -> dict[str, Any]:
        """What applying `spec` would change against the latest version (unified diff)."""
        old = campaign_of(who, campaign_id).definition
        new = compiled(who, spec)
        if new.id != old.id:
            raise HTTPException(422, [{"loc": ["body", "name"], "type": "value_error",
                                       "msg": f"this is campaign {old.name!r}"}])
        lines = definition_diff(old, new, "request")
        return {"changed": bool(lines), "version": old.version, "diff": lines}

    @v1.post("/campaigns/{campaign_id}/preview", tags=["campaigns"])
    async def preview_campaign(campaign_id: UUID, body: PreviewRequest,
                               who: Reader) -> dict[str, Any]:
        """Every step for one patient, due times in the clinic's local time, rendered."""
        d = campaign_of(who, campaign_id).definition
        at = (body.at or datetime.now(UTC)).astimezone(UTC)
        starts = body.starts_at.astimezone(UTC) if body.starts_at else at + timedelta(days=7)
        try:
            lines = preview(d, body.patient_id, at, starts, {})
        except DomainError as exc:
            raise HTTPException(422, [{"loc": ["body"], "msg": str(exc),
                                       "type": "value_error"}]) from None
        return {"lines": lines}

    @v1.post("/campaigns/{campaign_id}/{action}", tags=["campaigns"])
    async def change_status(campaign_id: UUID, action: Action, who: Admin) -> dict[str, Any]:
        """§2 lifecycle: draft → active ⇄ paused → archived. 409 for a move the lifecycle
        does not allow."""
        campaign_of(who, campaign_id)
        try:
            changed = await asyncio.to_thread(app.change_status, campaign_id, action.value,
                                              datetime.now(UTC))
        except DomainError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"changed": changed, **_summary(app.campaigns.aggregate(campaign_id),
                                               datetime.now(UTC))}

    @v1.get("/gallery", tags=["campaigns"])
    async def gallery(who: Reader) -> list[dict[str, Any]]:
        """The ready-made campaigns (§2 gallery), as documents to adapt and apply."""
        out = []
        for path in sorted(GALLERY.glob("*.yaml")):
            doc = yaml.safe_load(path.read_text())
            out.append({"file": path.name, "name": doc.get("name"), "kind": doc.get("kind"),
                        "trigger": doc.get("trigger"),
                        "description": doc.get("description"), "document": doc})
        return out

    # -- enrollments -------------------------------------------------------------------
    @v1.post("/enrollments", tags=["enrollments"], status_code=201,
             responses={200: {"description": "already enrolled: the same enrollment"}})
    async def enroll(body: EnrollRequest, who: Admin, response: Response) -> dict[str, Any]:
        """Enroll one patient (§3). Idempotent: the same request again returns the same
        enrollment with 200. 409 when the campaign is not active."""
        campaign = campaign_of(who, body.campaign_id).definition
        dates = {APPOINTMENT_STARTS_AT: body.starts_at.astimezone(UTC)} if body.starts_at else {}
        try:
            enrollment, created = await asyncio.to_thread(
                app.enroll, who.clinic_id, body.campaign_id, body.patient_id,
                datetime.now(UTC), f"api:{uuid.uuid4()}", appointment_id=body.appointment_id,
                dates=dates)
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, [{"loc": ["body", "appointment_id"], "msg": str(exc),
                                       "type": "missing"}]) from None
        except DomainError as exc:
            raise HTTPException(422, [{"loc": ["body"], "msg": str(exc),
                                       "type": "value_error"}]) from None
        if not created:
            response.status_code = 200
        return {"created": created, **_state(enrollment, campaign)}

    @v1.delete("/enrollments/{enrollment_id}", tags=["enrollments"])
    async def unenroll(enrollment_id: UUID, who: Admin) -> dict[str, Any]:
        """Stop an enrollment now (§4 reason `manual`); `stopped` false when it had ended."""
        try:
            stopped = await asyncio.to_thread(app.unenroll, who.clinic_id, enrollment_id,
                                              datetime.now(UTC), f"api:{uuid.uuid4()}")
        except UnknownEnrollment:
            raise HTTPException(404, f"no enrollment {enrollment_id}") from None
        return {"enrollment_id": str(enrollment_id), "stopped": stopped}

    @v1.get("/enrollments", tags=["enrollments"])
    async def list_enrollments(
            who: Reader, campaign_id: UUID | None = None,
            status: EnrollmentStatus | None = None, stop_reason: StopReason | None = None,
            patient_id: str | None = None, due_before: AwareDatetime | None = None,
            cursor: UUID | None = None,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> dict[str, Any]:
        """The clinic's enrollments with progress, filtered; pages by `cursor` (pass the
        `next_cursor` of the previous page)."""
        items = await asyncio.to_thread(run, lambda cur: analytics.enrollments(
            cur, who.clinic_id, campaign_id=campaign_id, patient_id=patient_id,
            status=status.value if status else None,
            stop_reason=stop_reason.value if stop_reason else None, due_before=due_before,
            after=cursor, limit=limit))
        return {"items": items,
                "next_cursor": str(items[-1]["enrollment_id"]) if len(items) == limit else None}

    @v1.get("/enrollments/{enrollment_id}", tags=["enrollments"])
    async def get_enrollment(enrollment_id: UUID, who: Reader,
                             at: AwareDatetime | None = None) -> dict[str, Any]:
        """One enrollment: its state and progress ("2/5 (40 %)"), and its full event
        history; with `at`, as it was then (§8 time travel: the events up to `at`)."""
        events, state = await asyncio.to_thread(app.history, enrollment_id, None)
        if not events or getattr(events[0], "clinic_id", None) != who.clinic_id:
            raise HTTPException(404, f"no enrollment {enrollment_id}")
        if at is not None:
            events, state = await asyncio.to_thread(app.history, enrollment_id,
                                                    at.astimezone(UTC))
        out: dict[str, Any] = {"enrollment_id": str(enrollment_id), "at": at,
                               "history": [_event(e) for e in events]}
        if state is not None:
            out.update(_state(state, app.campaigns.get(state.campaign_id,
                                                       state.campaign_version)))
        else:
            out["status"] = "not_started"
        return out

    @v1.post("/enrollments/bulk", tags=["enrollments"], status_code=202)
    async def bulk_enroll(who: Admin, campaign_id: Annotated[UUID, Form()],
                          file: Annotated[UploadFile, File(description=(
                              "CSV with a header: patient_id[,appointment_id,starts_at]"))],
                          ) -> dict[str, Any]:
        """Enroll every patient of an uploaded CSV (§3 bulk), as a job you poll at
        `GET /v1/jobs/{job_id}`: created, existing (enrolled before) and refused rows."""
        campaign = campaign_of(who, campaign_id)
        raw = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(raw) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"larger than {MAX_UPLOAD_BYTES} bytes")
        try:
            job = work.bulk_enroll(who.clinic_id, campaign.id, raw)
        except ValueError as exc:
            raise HTTPException(422, [{"loc": ["body", "file"], "msg": str(exc),
                                       "type": "value_error"}]) from None
        return {"job_id": str(job), "status_url": f"/v1/jobs/{job}"}

    @v1.post("/backtests", tags=["campaigns"], status_code=202)
    async def backtest(body: BacktestRequest, who: Admin) -> dict[str, Any]:
        """Run definitions over the data set's history from empty state, in a scratch
        database, as a job you poll: the report they would have produced (§2 backtest)."""
        for spec in body.campaigns:
            compiled(who, spec)  # 422 now, naming the field, rather than a failed job
        clinic = app.campaigns.clinic(who.clinic_id)
        if clinic is None:
            raise HTTPException(404, f"no clinic {who.clinic_id}")
        try:
            job = work.backtest(clinic, [s.model_dump(mode="json", exclude_none=True)
                                         for s in body.campaigns], body.limit)
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        return {"job_id": str(job), "status_url": f"/v1/jobs/{job}"}

    @v1.get("/jobs/{job_id}", tags=["operations"])
    async def get_job(job_id: UUID, who: Reader) -> dict[str, Any]:
        """A job: kind, status (queued, running, done, failed), progress, result or error."""
        found = await asyncio.to_thread(run, lambda cur: jobs.get(cur, job_id, who.clinic_id))
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return found

    # -- patients --------------------------------------------------------------------
    @v1.get("/patients/{patient_id}/enrollments", tags=["patients"])
    async def patient_sequences(patient_id: str, who: Reader) -> list[dict[str, Any]]:
        """The patient's active and past sequences: campaign, current step, status, next
        due time (UTC and the clinic's local time), stop reason, progress."""
        items = await asyncio.to_thread(run, lambda cur: analytics.enrollments(
            cur, who.clinic_id, patient_id=patient_id, limit=MAX_PAGE))
        clinic = app.campaigns.clinic(who.clinic_id)
        if clinic is not None:
            calendar = app.campaigns.calendar(who.clinic_id, clinic.time_zone)
            for item in items:
                if item["next_due_at"] is not None:
                    item["next_due_local"] = calendar.local(item["next_due_at"]).isoformat()
        return items

    @v1.get("/patients/{patient_id}/timeline", tags=["patients"])
    async def patient_timeline(patient_id: str, who: Reader) -> list[dict[str, Any]]:
        """Everything drip did for the patient, across campaigns, in time order."""
        return await asyncio.to_thread(run, lambda cur: analytics.timeline(
            cur, who.clinic_id, patient_id=patient_id))

    # -- stats -----------------------------------------------------------------------
    @v1.get("/stats/campaigns", tags=["stats"], responses=CSV)
    async def campaign_stats_(who: Reader, since: AwareDatetime | None = None,
                              until: AwareDatetime | None = None,
                              format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
                              ) -> Any:
        """Per campaign: enrolled, active, completed, ignored, stopped by reason, for
        enrollments started in `[since, until)`."""
        found = await asyncio.to_thread(run, lambda cur: analytics.campaign_totals(
            cur, who.clinic_id, since, until))
        return _csv(found) if format == "csv" else found

    @v1.get("/stats/funnel", tags=["stats"], responses=CSV)
    async def funnel(who: Reader, since: AwareDatetime | None = None,
                     until: AwareDatetime | None = None,
                     format: Annotated[str, Query(pattern="^(json|csv)$")] = "json") -> Any:
        """§7 funnel per campaign, step, variant and channel of messages sent in
        `[since, until)`: sent, delivered, failed, bounced, opened, clicked, responded,
        rebooked (responded and rebooked count the last message before them)."""
        found = await asyncio.to_thread(run, lambda cur: analytics.funnel(
            cur, who.clinic_id, since, until))
        return _csv(found) if format == "csv" else found

    @v1.get("/stats/attribution", tags=["stats"], responses=CSV)
    async def attribution(who: Reader, days: Annotated[int, Query(ge=1, le=365)] = 14,
                          format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
                          ) -> Any:
        """Conversion attribution: messages followed by an appointment booked within
        `days` days, per campaign, step and channel."""
        found = await asyncio.to_thread(run, lambda cur: analytics.attribution(
            cur, who.clinic_id, days))
        return _csv(found) if format == "csv" else found

    @v1.get("/stats/roi", tags=["stats"], responses=CSV)
    async def roi(who: Reader,
                  format: Annotated[str, Query(pattern="^(json|csv)$")] = "json") -> Any:
        """Re-engagement ROI per campaign and variant (incentive): enrolled, rebooked."""
        found = await asyncio.to_thread(run, lambda cur: analytics.roi(cur, who.clinic_id))
        return _csv(found) if format == "csv" else found

    # -- dead letters ----------------------------------------------------------------
    @v1.get("/dead-letters", tags=["operations"])
    async def list_dead_letters(who: Reader) -> list[dict[str, Any]]:
        """Records refused for this clinic (those naming it), with reason and origin."""
        found = await asyncio.to_thread(run, lambda cur: dead_letters.entries(cur))
        return [_letter(e) for e in found if e.clinic_id == who.clinic_id]

    api.include_router(v1)
    for router in extra:
        api.include_router(router)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": e.get("msg"),
                                         "type": e.get("type")} for e in exc.errors()]},
                            status_code=422)

    return api


async def serve_api(api: FastAPI, settings: Settings) -> None:
    """Serve `api` with uvicorn on `api_host:api_port` until cancelled."""
    await serve_http(api, settings.api_host, settings.api_port)


# -- shapes -----------------------------------------------------------------------------
def _summary(c: Campaign, now: datetime) -> dict[str, Any]:
    d = c.definition
    return {"campaign_id": str(c.id), "clinic_id": d.clinic_id, "name": d.name, "kind": d.kind,
            "trigger": d.trigger, "subject": d.subject,
            "status": str(d.status_at(c.status, now)), "latest_version": d.version}


def _state(e: Enrollment, campaign: CampaignDefinition) -> dict[str, Any]:
    total = len(campaign.steps)
    done = total if e.status == EnrollmentStatus.COMPLETED else min(e.next_index, total)
    due = e.pending_due
    return {"enrollment_id": str(e.id), "campaign_id": str(e.campaign_id),
            "campaign": campaign.name, "campaign_version": e.campaign_version,
            "patient_id": e.patient_id, "subject": e.subject, "status": str(e.status),
            "stop_reason": e.stop_reason or e.ignore_reason,
            "next_step": e.pending_step if due is not None else None, "next_due_at": due,
            "next_due_local": campaign.calendar.local(due).isoformat() if due else None,
            "progress": campaign_stats.progress(done, total), "sent_steps": list(e.sent_steps),
            "variants": dict(e.variants), "started_at": e.started_at}


def _event(event: Any) -> dict[str, Any]:
    fields = {k: v for k, v in vars(event).items()
              if k not in ("originator_id", "originator_version", "timestamp")}
    return {"event": type(event).__name__, "version": event.originator_version,
            "at": event_time(event), "recorded_at": event.timestamp,
            "data": plain(fields)}


def _letter(e: dead_letters.Entry) -> dict[str, Any]:
    d = e.letter
    return {"id": e.id, "reason": d.reason, "consumer": d.consumer, "topic": d.topic,
            "partition": d.partition, "offset": d.offset, "created_at": e.created_at,
            "redriven_at": e.redriven_at, "redriven_to": e.redriven_to,
            "headers": {k: v.decode(errors="replace") for k, v in d.headers},
            "payload": (d.value or b"").decode(errors="replace")[:10_000]}


def _csv(found: list[dict[str, Any]]) -> PlainTextResponse:
    out = io.StringIO()
    if found:
        writer = csv.DictWriter(out, fieldnames=list(found[0]))
        writer.writeheader()
        for row in found:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v
                             for k, v in row.items()})
    return PlainTextResponse(out.getvalue(), media_type="text/csv")
