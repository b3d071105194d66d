"""drip's own `step.due` timer event: the timer service says a step fell due (§2)."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.envelope import Contract, UtcDatetime


class StepDueV1(Contract):
    """Kafka key = patient id, so a patient's timers keep their order."""

    type: Literal["step.due"] = "step.due"
    dataversion: Literal[1] = 1
    enrollment_id: UUID = Field(description="Enrollment whose step fell due")
    clinic_id: str = Field(description="Tenant (§1)")
    patient_id: str = Field(description="Patient id (Kafka key)")
    step_index: int = Field(ge=0, description="0-based index of the step in the campaign")
    due_at: UtcDatetime = Field(description="The step's due time (UTC)")
    held_until: UtcDatetime | None = Field(
        None, description="Set when the step fell due while its campaign was paused: it "
                          "goes at this time (the resume), or is skipped past its deadline")
