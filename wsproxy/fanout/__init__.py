"""Fan-out: one change to every connection that should see it.

* :mod:`wsproxy.fanout.hub`: the broadcaster and its history;
* :mod:`wsproxy.fanout.routing`: which subscriptions an event can reach;
* :mod:`wsproxy.fanout.subscription`: what one client receives;
* :mod:`wsproxy.fanout.tracking`: the documents a filtered connection holds;
* :mod:`wsproxy.fanout.connection`: one client's queue and writer.
"""
