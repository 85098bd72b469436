"""Limits: what each principal (or remote address) may cost a worker.

* :mod:`wsproxy.limits.throttle`: connect rate, catch-up and snapshot slots;
* :mod:`wsproxy.limits.budget`: what a principal holds open at once;
* :mod:`wsproxy.limits.tickets`: reconnect tickets.
"""
