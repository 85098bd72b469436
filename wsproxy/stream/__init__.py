"""Stream: MongoDB's change streams, on threads of their own; no Flask.

* :mod:`wsproxy.stream.source`: the watcher, feeding the hub;
* :mod:`wsproxy.stream.catchup`: one client's catch-up from MongoDB;
* :mod:`wsproxy.stream.errorpolicy`: which driver errors end what;
* :mod:`wsproxy.stream.scopecheck`: the watched scope, checked at start;
* :mod:`wsproxy.stream.preimages`: pre-images, checked at start.
"""
