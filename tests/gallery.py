"""The ready-made campaigns of campaigns/ as tests use them: loaded from their files."""

from __future__ import annotations

from pathlib import Path

from domain.campaign import CampaignDefinition
from domain.clinic import ClinicSettings
from services.application.definitions import load_campaign, load_clinic

GALLERY = Path(__file__).resolve().parents[1] / "campaigns"
CLINIC: ClinicSettings = load_clinic(GALLERY / "clinics" / "vitoria.yaml")


def campaign(name: str) -> CampaignDefinition:
    """campaigns/NAME.yaml for the demo clinic (`vitoria`, America/Sao_Paulo)."""
    return load_campaign(GALLERY / f"{name}.yaml", CLINIC)


def appointment_reminders() -> CampaignDefinition:
    return campaign("appointment-reminders")


def no_show_recovery() -> CampaignDefinition:
    return campaign("no-show-recovery")
