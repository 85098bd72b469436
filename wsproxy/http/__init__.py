"""HTTP: the Flask side.

* :mod:`wsproxy.http.extension`: ``WSProxy``, the extension;
* :mod:`wsproxy.http.views`: the blueprint, admission, a connection's session;
* :mod:`wsproxy.http.control`: messages from client to server.
"""
