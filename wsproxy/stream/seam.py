"""What a job that runs beside the live feed and then hands its client
over to it is given: a catch-up from MongoDB
(:mod:`wsproxy.stream.catchup`) and a snapshot (:mod:`wsproxy.live.snapshot`)
both put items on the hub's intake behind what the watcher read, wait
for the live feed to pass a point, hold one of their principal's slots
and one of the worker's (:func:`wsproxy.limits.throttle.holding`), and
are bounded in time. :class:`SeamInputs` is that common part, built from
a running proxy in one place; each job's inputs add their own."""

import dataclasses
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..limits import throttle

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ..fanout.connection import ClientConnection
    from ..fanout.hub import Hub
    from .source import ChangeSource


class SeamState(Protocol):
    """What :meth:`SeamInputs.shared` reads of a started ProxyState
    (wsproxy.http.extension, a layer above this one)."""

    config: Mapping[str, Any]
    hub: "Hub"
    source: "ChangeSource"
    stopping: threading.Event


@dataclasses.dataclass(frozen=True)
class SeamInputs:
    """The inputs a catch-up and a snapshot share, named. Each kind of
    job says, as class attributes, what counts it (``gauge``) and what its
    client is told when no slot is free (``busy_for_key``, formatted with
    the ``limit``, and ``busy``)."""

    gauge: ClassVar[object]
    busy_for_key: ClassVar[str]
    busy: ClassVar[str]

    # (item, stopping) -> bool: put an item on the hub's intake, behind
    # everything the watcher has read (Hub.submit).
    submit: Callable[[object, threading.Event], bool]
    # () -> clusterTime of the last event the live feed published, or None
    # (Hub.published_through).
    published_through: Callable[[], Any]
    # () -> when the watcher's last empty round trip began (monotonic), or
    # None (ChangeSource.caught_up_as_of).
    watcher_caught_up_as_of: Callable[[], float | None]
    slots: threading.BoundedSemaphore  # jobs of this kind at once in the worker
    slots_per_key: throttle.KeyedSlots  # per principal (or address)
    stopping: threading.Event  # the worker is shutting down
    slot_wait: float  # seconds to wait for a slot
    time_limit: float  # seconds the job may take

    @staticmethod
    def shared(
        state: SeamState,
        slots: threading.BoundedSemaphore,
        slots_per_key: throttle.KeyedSlots,
    ) -> dict[str, Any]:
        """The shared fields, from a started ProxyState (see
        wsproxy.http.extension), with the job's kind of ``slots`` (the
        worker's) and ``slots_per_key``: keyword arguments for the
        job's own inputs' constructor."""
        config, hub, source = state.config, state.hub, state.source
        return {
            "submit": hub.submit,
            "published_through": lambda: hub.published_through,
            "watcher_caught_up_as_of": lambda: source.caught_up_as_of,
            "slots": slots,
            "slots_per_key": slots_per_key,
            "stopping": state.stopping,
            "slot_wait": config["WSPROXY_CLOSE_TIMEOUT"],
            "time_limit": config["WSPROXY_CATCHUP_TIMEOUT"],
        }

    def holding(
        self, client: "ClientConnection"
    ) -> "AbstractContextManager[Hashable | None]":
        """Hold one of the client's principal's slots and one of the
        worker's while the job runs (:func:`wsproxy.limits.throttle.holding`):
        yields whom the job is charged to, or None if the client was
        refused (1013)."""
        return throttle.holding(
            client,
            throttle.client_key(client.principal, client.remote_addr),
            per_key=self.slots_per_key,
            slots=self.slots,
            timeout=self.slot_wait,
            gauge=self.gauge,
            busy_for_key=self.busy_for_key,
            busy=self.busy,
        )
