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
from collections.abc import Callable
from typing import ClassVar

from ..limits import throttle


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
    submit: Callable
    # () -> clusterTime of the last event the live feed published, or None
    # (Hub.published_through).
    published_through: Callable
    # () -> when the watcher's last empty round trip began (monotonic), or
    # None (ChangeSource.caught_up_as_of).
    watcher_caught_up_as_of: Callable
    slots: object  # a BoundedSemaphore: jobs of this kind at once in the worker
    slots_per_key: object  # a throttle.KeyedSlots: per principal (or address)
    stopping: threading.Event  # the worker is shutting down
    slot_wait: float  # seconds to wait for a slot
    time_limit: float  # seconds the job may take

    @staticmethod
    def shared(state, slots, slots_per_key):
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

    def holding(self, client):
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
