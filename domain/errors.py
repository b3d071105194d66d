"""Named refusals of the domain (STYLE §8: a domain refusal is a named error, never `assert`)."""


class DomainError(Exception):
    """Base of every rule the domain refuses to break."""


class InvalidCampaign(DomainError):
    """A campaign definition breaks §2 (no steps, unknown channel, duplicate step name...)."""


class MissingDate(DomainError):
    """A wait-until names a date the enrollment does not carry (§2 wait-until)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"the enrollment has no date {field!r} to wait for")
        self.field = field
