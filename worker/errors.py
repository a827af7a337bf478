"""One exception tree for the project; each class's docstring is its default message."""

from __future__ import annotations


class PawError(Exception):
    """Something went wrong in plaid-atomic-worker."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class SettingsError(PawError):
    """A setting is missing or malformed."""

    def __init__(self, *problems: str) -> None:
        """One problem per line, each naming its variable; :func:`worker.settings.load` gathers all."""
        self.problems = list(problems) or [(self.__doc__ or "").strip()]
        super().__init__("; ".join(self.problems))


class Unreachable(PawError):
    """A service paw needs (Postgres, RabbitMQ) could not be reached."""


class NotMigrated(PawError):
    """The database is not migrated: run `paw migrate`."""


class IllegalTransition(PawError):
    """The state machine does not allow this transition."""


class TokenSealError(PawError):
    """A sealed token could not be opened with any configured key."""


class Deferred(PawError):
    """Not a failure: the message came too early and is tried again later.

    Deferrals back off like retries but do not use up the retry budget; they have a larger one.
    """


class UpstreamError(PawError):
    """An upstream API (Plaid or Atomic) answered with an error."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        status: int | None = None,
        error_code: str | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.status = status
        self.error_code = error_code
        self.error_type = error_type
        self.request_id = request_id
        self.retry_after = retry_after


class PublishFailed(PawError):
    """The broker did not confirm the message."""


class Unroutable(PublishFailed):
    """No queue is bound for the routing key: the broker returned the message (it was mandatory)."""


class EventTooEarly(Deferred):
    """The event is about a step the Item has not committed yet; it is retried later."""


class DlqError(PawError):
    """The dead-letter command could not do what was asked."""


class DeadQueueLost(DlqError):
    """The broker took the dead queue's channel away mid-run: run the same command again."""


class ResultParked(PawError):
    """The database could not take what an upstream call did: the result was parked on the broker
    (confirmed) and is applied as soon as Postgres answers. The message that led to it is done."""


class Poison(PawError):
    """The message can never be processed as it is."""


class ItemBusy(Deferred):
    """Another worker is driving this Item right now; try again when its lease ends."""


class CallbackFailed(UpstreamError):
    """An upstream app's callback URL did not answer 2xx in time; retried, then dead-lettered."""


class CallbackRefused(Poison):
    """A callback URL points where paw must not connect (link-local, metadata, private): dead-lettered
    at once, for `paw dlq replay` once PAW_CALLBACKS is fixed."""
