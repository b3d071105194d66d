"""The read-only dashboard for clinic staff and analysts (§7), server-rendered with Jinja2
(no front-end build): `/` the clinic's campaigns, each with its funnel drawn as an SVG bar
chart; `/patients/{id}` a patient's sequences and timeline; `/enrollments/{id}` one
enrollment's history; `/dead-letters` the records refused for the clinic.

Sign-in is the clinic's API key (any role), kept in an HTTP-only cookie; pages never
change anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from psycopg import Cursor

from projections import analytics, api_keys, campaign_stats, dead_letters
from projections.api_keys import Principal
from services.application.app import DripApplication

T = TypeVar("T")
Run = Callable[[Callable[[Cursor[Any]], T]], T]
templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(["html"]))
FUNNEL = ("sent", "delivered", "opened", "clicked")


def router(app: DripApplication, run: Run[Any],
           principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    async def who(request: Request) -> Principal | None:
        try:
            return await principal(request, None)
        except HTTPException:
            return None

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        if context.get("me") is not None:
            context.setdefault("clinic", app.campaigns.clinic(context["me"].clinic_id))
        return HTMLResponse(templates.get_template(name).render(**context), status_code=status)

    @pages.get("/login")
    async def login_form() -> HTMLResponse:
        return page("login.html")

    @pages.post("/login")
    async def login(key: str = Form(...)) -> Response:
        found = await asyncio.to_thread(run, lambda cur: api_keys.authenticate(cur, key))
        if found is None:
            return page("login.html", status=401, error="That key is not valid.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie("drip_key", key, httponly=True, samesite="strict")
        return response

    @pages.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie("drip_key")
        return response

    async def campaigns(me: Principal) -> Response:
        report = await asyncio.to_thread(run, lambda cur: campaign_stats.report(
            cur, me.clinic_id))
        clinic = app.campaigns.clinic(me.clinic_id)
        ids = {c.definition.name: c for c in app.campaigns.all()
               if c.definition.clinic_id == me.clinic_id}
        charts = []
        for name, c in report["campaigns"].items():
            steps = [{"name": s, **{m: v.get(m, 0) for m in FUNNEL}}
                     for s, v in c["steps"].items()]
            top = max([1, *(s["sent"] for s in steps)])
            charts.append({"name": name, "id": ids[name].id if name in ids else None,
                           "status": ids[name].status if name in ids else "",
                           "enrolled": c["enrolled"], "completed": c["completed"],
                           "stopped": c["stopped"], "steps": steps, "top": top})
        return page("index.html", me=me, clinic=clinic, charts=charts, funnel=FUNNEL,
                    dead_letters=report.get("dead_letters"))

    async def patient(me: Principal, patient_id: str) -> Response:
        def read(cur: Cursor[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return (analytics.enrollments(cur, me.clinic_id, patient_id=patient_id),
                    analytics.timeline(cur, me.clinic_id, patient_id=patient_id))
        sequences, events = await asyncio.to_thread(run, read)
        return page("timeline.html", me=me, title=f"Patient {patient_id}",
                    sequences=sequences, events=events)

    async def enrollment(me: Principal, enrollment_id: str) -> Response:
        try:
            eid = UUID(enrollment_id)
        except ValueError:
            return page("missing.html", status=404, me=me, what=f"enrollment {enrollment_id}")
        def read(cur: Cursor[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return (analytics.enrollments(cur, me.clinic_id, enrollment_id=eid, limit=1),
                    analytics.timeline(cur, me.clinic_id, enrollment=eid))
        sequences, events = await asyncio.to_thread(run, read)
        if not sequences:
            return page("missing.html", status=404, me=me, what=f"enrollment {enrollment_id}")
        return page("timeline.html", me=me, title=f"Enrollment {enrollment_id}",
                    sequences=sequences, events=events)

    async def letters(me: Principal) -> Response:
        found = await asyncio.to_thread(run, lambda cur: dead_letters.entries(cur))
        mine = [e for e in found if e.clinic_id == me.clinic_id]
        return page("dead_letters.html", me=me, letters=mine)

    async def find(me: Principal, q: str = "") -> Response:
        q = q.strip()
        try:
            UUID(q)
        except ValueError:
            return RedirectResponse(f"/patients/{q}", status_code=303)
        return RedirectResponse(f"/enrollments/{q}", status_code=303)

    def gate(view: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        async def open_(request: Request, **path: str) -> Response:
            me = await who(request)
            if me is None:
                return RedirectResponse("/login", status_code=303)
            return await view(me, **path)
        return open_

    @pages.get("/")
    async def index(request: Request) -> Response:
        return await gate(campaigns)(request)

    @pages.get("/patients/{patient_id}")
    async def patient_page(request: Request, patient_id: str) -> Response:
        return await gate(patient)(request, patient_id=patient_id)

    @pages.get("/enrollments/{enrollment_id}")
    async def enrollment_page(request: Request, enrollment_id: str) -> Response:
        return await gate(enrollment)(request, enrollment_id=enrollment_id)

    @pages.get("/dead-letters")
    async def letters_page(request: Request) -> Response:
        return await gate(letters)(request)

    @pages.get("/find")
    async def find_page(request: Request, q: str = "") -> Response:
        return await gate(find)(request, q=q)

    return pages
