"""`drip clinic …` and `drip campaign …`: clinics and campaigns as data (§2, issue 7).

Every command connects to what `DRIP_DATABASE_URL` names and never starts anything.
A file that cannot be applied prints one line per problem (file: step: field: what) and
exits 2; an unknown campaign exits 3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from contracts.campaigns import CampaignSpec, ClinicSpec
from domain.campaign import Campaign, CampaignDefinition
from domain.errors import DomainError
from projections import api_keys
from services.application.app import DripApplication
from services.application.catalog import UnknownCampaign
from services.application.definitions import (
    DefinitionError,
    compile_campaign,
    definition_diff,
    load_campaign,
    load_clinic,
    plain,
    read_campaign_spec,
)
from services.application.preview import preview
from services.bootstrap import build_application, build_pool
from services.cli.output import console, err
from services.settings import Settings

clinic_app = typer.Typer(help="Clinics (§1): time zone, business hours, holidays, limits.",
                         no_args_is_help=True)
campaign_app = typer.Typer(help="Campaigns as data (§2): apply, preview, lifecycle, versions.",
                           no_args_is_help=True)
FileArg = Annotated[Path, typer.Argument(help="A YAML or JSON file", exists=False)]
NameArg = Annotated[str, typer.Argument(help="The campaign's name")]
ClinicOpt = Annotated[str | None, typer.Option(
    "--clinic", help="The clinic, when several have a campaign of that name")]


@contextmanager
def application() -> Iterator[DripApplication]:
    app = build_application(Settings())
    try:
        yield app
    finally:
        app.close()


@contextmanager
def refusals() -> Iterator[None]:
    """Definition and domain refusals → their lines on stderr and exit 2 (3: not found)."""
    try:
        yield
    except DefinitionError as exc:
        for line in exc.problems:
            err.print(f"[red]error[/red] {line}", highlight=False, markup=True)
        raise typer.Exit(2) from None
    except UnknownCampaign as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(3) from None
    except DomainError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _campaign(app: DripApplication, name: str, clinic: str | None) -> Campaign:
    found = [c for c in app.campaigns.all() if c.definition.name == name
             and (clinic is None or c.definition.clinic_id == clinic)]
    if not found:
        raise UnknownCampaign(f"no campaign {name!r}" + (f" in clinic {clinic!r}" if clinic else ""))
    if len(found) > 1:
        raise UnknownCampaign(f"campaign {name!r} exists in clinics "
                              f"{sorted(c.definition.clinic_id for c in found)}: give --clinic")
    return found[0]


# -- clinics --------------------------------------------------------------------------
@clinic_app.command("apply")
def clinic_apply(file: FileArg) -> None:
    """Register a clinic, or record its changed settings."""
    with refusals():
        settings = load_clinic(file)
        with application() as app:
            outcome = app.apply_clinic(settings)
    console.print(f"clinic {settings.clinic_id}: {outcome}")


key_app = typer.Typer(help="API keys of a clinic (stored hashed; roles admin, analyst).",
                      no_args_is_help=True)
clinic_app.add_typer(key_app, name="key")


@key_app.command("create")
def key_create(clinic: Annotated[str, typer.Argument(help="The clinic id")],
               role: Annotated[str, typer.Option(help="admin (changes) or analyst (reads)")]
               = "analyst") -> None:
    """Create an API key for CLINIC and print it once (only its SHA-256 is stored)."""
    if role not in api_keys.ROLES:
        raise typer.BadParameter(f"one of {', '.join(api_keys.ROLES)}", param_hint="--role")
    settings = Settings()
    with application() as app:
        if app.campaigns.clinic(clinic) is None:
            err.print(f"[red]error[/red] unknown clinic {clinic!r} (drip clinic apply FILE)")
            raise typer.Exit(3)
    with build_pool(settings) as pool, pool.connection() as conn, conn.cursor() as cur:
        key = api_keys.create(cur, clinic, role, datetime.now(UTC))
    typer.echo(key)


@key_app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(help="The id: drip_<id>_…")]) -> None:
    """Revoke a key: it stops working at once."""
    with build_pool(Settings()) as pool, pool.connection() as conn, conn.cursor() as cur:
        cur.execute(api_keys.DDL)
        if not api_keys.revoke(cur, key_id, datetime.now(UTC)):
            err.print(f"[red]error[/red] no active key {key_id!r}")
            raise typer.Exit(3)
    console.print(f"key {key_id}: revoked")


@clinic_app.command("schema")
def clinic_schema() -> None:
    """Print the JSON Schema of clinic files."""
    typer.echo(json.dumps(ClinicSpec.model_json_schema(by_alias=True), indent=2))


# -- campaigns ------------------------------------------------------------------------
def _load(app: DripApplication, file: Path) -> CampaignDefinition:
    """A campaign file compiled against its clinic as applied."""
    spec = read_campaign_spec(file)
    return compile_campaign(spec, app.campaigns.clinic(spec.clinic), str(file))


@campaign_app.command("apply")
def campaign_apply(
    files: Annotated[list[Path], typer.Argument(help="Campaign files (YAML or JSON)")],
    activate: Annotated[bool, typer.Option(help="Also activate each campaign")] = False,
) -> None:
    """Validate and record campaign files: new campaigns are drafts, a changed file is a
    new version (§2). All files are validated before any is recorded."""
    with refusals(), application() as app:
        definitions = [_load(app, f) for f in files]
        for d in definitions:
            campaign, outcome = app.apply_campaign(d)
            if activate:
                app.change_status(campaign.id, "activate", datetime.now(UTC))
            console.print(f"{d.clinic_id}/{d.name}: {outcome}, version "
                          f"{campaign.definition.version}, {app.campaigns.aggregate(campaign.id).status}")


@campaign_app.command("list")
def campaign_list(clinic: ClinicOpt = None) -> None:
    """Every campaign: clinic, name, kind, trigger, status, latest version."""
    with refusals(), application() as app:
        table = Table("clinic", "campaign", "kind", "trigger", "status", "version")
        now = datetime.now(UTC)
        for c in sorted(app.campaigns.all(), key=lambda c: (c.definition.clinic_id,
                                                             c.definition.name)):
            d = c.definition
            if clinic is None or d.clinic_id == clinic:
                table.add_row(d.clinic_id, d.name, d.kind, d.trigger,
                              d.status_at(c.status, now), str(d.version))
    console.print(table)


@campaign_app.command("show")
def campaign_show(name: NameArg, clinic: ClinicOpt = None,
                  version: Annotated[int | None, typer.Option(help="Default: latest")] = None,
                  ) -> None:
    """A campaign's definition (as recorded) and status, as YAML."""
    with refusals(), application() as app:
        campaign = _campaign(app, name, clinic)
        d = campaign.at_version(version) if version else campaign.definition
        shown = {"status": str(d.status_at(campaign.status, datetime.now(UTC))),
                 "versions": sorted(campaign.versions), **plain(d.to_dict())}
    typer.echo(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True))


@campaign_app.command("diff")
def campaign_diff(file: FileArg) -> None:
    """What applying FILE would change against the recorded latest version (exit 1 if any)."""
    with refusals(), application() as app:
        new = _load(app, file)
        try:
            old = app.campaigns.aggregate(new.id).definition
        except UnknownCampaign:
            console.print(f"{new.clinic_id}/{new.name}: new campaign")
            raise typer.Exit(1) from None
    lines = definition_diff(old, new, str(file))
    for line in lines:
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
        console.print(line, style=style, highlight=False, markup=False)
    if not lines:
        console.print(f"{new.clinic_id}/{new.name}: unchanged (version {old.version})")
    raise typer.Exit(1 if lines else 0)


def _lifecycle(action: str, name: str, clinic: str | None) -> None:
    with refusals(), application() as app:
        campaign = _campaign(app, name, clinic)
        changed = app.change_status(campaign.id, action, datetime.now(UTC))
        status = app.campaigns.aggregate(campaign.id).status
    console.print(f"{campaign.definition.clinic_id}/{name}: {status}"
                  + ("" if changed else " (unchanged)"))


@campaign_app.command("activate")
def campaign_activate(name: NameArg, clinic: ClinicOpt = None) -> None:
    """draft or paused → active: it enrolls and sends."""
    _lifecycle("activate", name, clinic)


@campaign_app.command("pause")
def campaign_pause(name: NameArg, clinic: ClinicOpt = None) -> None:
    """active → paused: no enrollment, every due step held (every process within 1 s)."""
    _lifecycle("pause", name, clinic)


@campaign_app.command("resume")
def campaign_resume(name: NameArg, clinic: ClinicOpt = None) -> None:
    """paused → active: held steps go now, or are skipped past their deadline."""
    _lifecycle("resume", name, clinic)


@campaign_app.command("archive")
def campaign_archive(name: NameArg, clinic: ClinicOpt = None) -> None:
    """→ archived for good: enrollments in flight stop at their next step."""
    _lifecycle("archive", name, clinic)


@campaign_app.command("migrate")
def campaign_migrate(
    name: NameArg,
    to: Annotated[int, typer.Option("--to", help="The version to move enrollments to")],
    step_map: Annotated[list[str] | None, typer.Option(
        "--map", help="old-step=new-step, for pending steps the new version renamed")] = None,
    clinic: ClinicOpt = None,
) -> None:
    """Move the campaign's active enrollments to version N, recorded as events (§2)."""
    mapping = dict(m.split("=", 1) for m in step_map or [] if "=" in m)
    if len(mapping) != len(step_map or []):
        raise typer.BadParameter("write each mapping as old-step=new-step", param_hint="--map")
    with refusals(), application() as app:
        campaign = _campaign(app, name, clinic)
        moved = app.migrate(campaign.id, to, mapping, datetime.now(UTC))
    console.print(f"{campaign.definition.clinic_id}/{name}: {moved:,} enrollments moved "
                  f"to version {to}")


@campaign_app.command("schema")
def campaign_schema() -> None:
    """Print the JSON Schema of campaign files."""
    typer.echo(json.dumps(CampaignSpec.model_json_schema(by_alias=True), indent=2))


@campaign_app.command("preview")
def campaign_preview(
    file: FileArg,
    patient: Annotated[str, typer.Option(help="The patient id")],
    at: Annotated[datetime | None, typer.Option(
        help="When the patient enrolls (ISO-8601, UTC if no offset; default now)")] = None,
    starts_at: Annotated[datetime | None, typer.Option(
        help="appointment.starts_at (default: 7 days after --at)")] = None,
    field: Annotated[list[str] | None, typer.Option(
        "--set", help="A merge field, e.g. patient.first_name=Ana")] = None,
    clinic: Annotated[Path | None, typer.Option(help="Clinic file, when not applied")] = None,
) -> None:
    """Every step of FILE for one patient: due time in the clinic's local time, what is
    sent (rendered) or why it is skipped, taken as the real Enrollment would."""
    enrolled = _utc(at) if at else datetime.now(UTC).replace(microsecond=0)
    starts = _utc(starts_at) if starts_at else enrolled + timedelta(days=7)
    with refusals():
        if clinic is not None:
            settings = load_clinic(clinic)
            definition = load_campaign(file, settings)
        else:
            with application() as app:
                definition = _load(app, file)
                settings = app.campaigns.clinic(definition.clinic_id)
        fields = _fields(field or [])
        if settings is not None:
            fields["clinic"] = {"id": settings.clinic_id, "name": settings.name,
                                "time_zone": settings.time_zone, "language": settings.locale,
                                **fields.get("clinic", {})}
        for line in preview(definition, patient, enrolled, starts, fields):
            typer.echo(line)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _fields(pairs: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        group, _, name = key.partition(".")
        if not name:
            raise typer.BadParameter(f"{pair!r}: write group.field=value", param_hint="--set")
        out.setdefault(group, {})[name] = value
    return out


