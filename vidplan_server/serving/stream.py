"""Bidirectional planning on one robot's stream of observations, always planning on the newest.

Every observation that arrives is validated, decoded and stored in the stream's session right away,
so the history stays dense. Only one plan per stream runs at a time; observations that arrive during
it wait in a one-element slot, and a newer one replaces an older one there (the older is *dropped* as
stale and listed in the next reply's ``dropped_sequences``). A bad observation yields a
:class:`StreamError` for its sequence and the stream goes on. A pending observation whose ``deadline_ms``
passes while the stream's previous plan runs is answered DEADLINE_EXCEEDED when that plan ends, unplanned.

It runs :class:`~vidplan_server.serving.service.PlanService`'s public pipeline, the one unary calls run:
``check`` and ``schedule`` and ``prepare`` when an observation arrives, ``admission`` and ``execute`` when it
is planned on.

A stream belongs to one session, the one its first accepted request names (or an anonymous one). Decided:
a later request naming another session is an error (``session_id``: unknown on this stream) rather than a
silent switch, since one stream's newest-first slot would otherwise drop one robot's observations for
another's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vidplan_server.serving.errors import InvalidArgument, ServingError, outcome_of
from vidplan_server.serving.messages import PlanCall, PlanReply
from vidplan_server.serving.validation import check_session_id

if TYPE_CHECKING:
    from vidplan_server.serving.service import PlanService, Prepared


@dataclass(frozen=True)
class StreamError:
    """The observation with ``sequence`` could not be planned on."""

    sequence: int
    session_id: str  # as the client sent it ("" for an anonymous stream)
    error: ServingError


class PlanStream:
    """Feed with :meth:`submit`, end with :meth:`close_input`, read :meth:`replies` concurrently."""

    def __init__(self, service: PlanService, transport: str) -> None:
        self._service = service
        self._transport = transport
        self._anonymous_session = f"stream-{uuid.uuid4().hex}"
        self._pending: Prepared | None = None
        self._dropped: list[int] = []
        self._errors: list[StreamError] = []
        self._closed = False
        self._wake = asyncio.Event()
        self._session: str | None = None  # the client's session id, fixed by the first accepted request

    def fail(self, sequence: int, session_id: str, error: ServingError) -> None:
        """Report a request the transport could not even convert (it never reaches the session)."""
        self._service.count(self._transport, "stream", outcome_of(error))
        self._errors.append(StreamError(sequence, self._echo(session_id), error))
        self._wake.set()

    async def submit(self, call: PlanCall) -> None:
        """Validate, decode and record one observation; it becomes the next to plan on."""
        arrived = time.perf_counter()
        service = self._service
        client_session = call.session_id
        if not call.session_id:
            # The server keeps a stream's history even when the client names no session.
            call = replace(call, session_id=self._anonymous_session)
        try:
            checked = service.check(call)  # the session id too, so the message below quotes a bounded one
            if self._session is not None and client_session != self._session:
                raise InvalidArgument(
                    f"{client_session!r} is unknown on this stream, which belongs to session "
                    f"{self._session!r}; open a new stream for another session",
                    field="session_id",
                )
            prepared = await service.prepare(service.schedule(call, checked, arrived))
        except Exception as exc:
            error = service.serving_error(exc) or ServingError(str(exc))
            service.count(self._transport, "stream", outcome_of(error))
            self._errors.append(StreamError(call.sequence, self._echo(client_session), error))
        else:
            self._session = client_session
            if self._pending is not None:
                self._dropped.append(self._pending.call.sequence)
                service.count(self._transport, "stream", "stale_dropped")
            self._pending = prepared
        self._wake.set()

    def close(self) -> None:
        """The stream is over: forget its anonymous session (a named session lives on until it idles out)."""
        self._service.sessions.discard(self._anonymous_session)

    def close_input(self) -> None:
        """No more observations; :meth:`replies` ends after planning on the last pending one."""
        self._closed = True
        self._wake.set()

    async def replies(self) -> AsyncIterator[PlanReply | StreamError]:
        """Replies and errors in order of sequence (for a client that sends rising sequences)."""
        while True:
            # An error goes out at once unless an older observation is still waiting to be planned.
            if self._errors and (self._pending is None or self._errors[0].sequence < self._pending.call.sequence):
                yield self._errors.pop(0)
                continue
            if self._pending is not None:
                prepared, self._pending = self._pending, None
                dropped, self._dropped = self._dropped, []
                yield await self._plan(prepared, dropped)
                continue
            if self._closed:
                return
            self._wake.clear()
            await self._wake.wait()

    async def _plan(self, prepared: Prepared, dropped: list[int]) -> PlanReply | StreamError:
        service = self._service
        try:
            with service.admission() as slot:
                reply = await service.execute(prepared, slot)
        except Exception as exc:
            error = service.serving_error(exc) or ServingError(str(exc))
            service.finished(self._transport, "stream", outcome_of(error), prepared.call, prepared.arrived)
            return StreamError(prepared.call.sequence, self._client_session(prepared.call.session_id), error)
        service.finished(self._transport, "stream", "ok", prepared.call, prepared.arrived)
        reply.dropped_sequences = dropped
        reply.session_id = self._client_session(reply.session_id)
        return reply

    def _client_session(self, session_id: str) -> str:
        return "" if session_id == self._anonymous_session else session_id

    def _echo(self, session_id: str) -> str:
        """The session id to echo in an error reply: "" when it is itself what was wrong (too long, unprintable)."""
        try:
            return check_session_id(session_id, self._service.limits)
        except InvalidArgument:
            return ""
