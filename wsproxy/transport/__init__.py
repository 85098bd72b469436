"""Transport: the wire. The server side's only user of flask-sock,
simple-websocket and wsproto, apart from the blueprint's route
(:mod:`wsproxy.http.views`).

* :mod:`wsproxy.transport.websocket`: guarded sockets, the frame policy;
* :mod:`wsproxy.transport.codec`: an event's frames, built once;
* :mod:`wsproxy.transport.compression`: shared permessage-deflate contexts.
"""
