"""Live documents: a snapshot, then the changes to it.

* :mod:`wsproxy.live.snapshot`: the read, merged with the changes kept
  during it;
* :mod:`wsproxy.live.documents`: what a live-documents connection holds.

The rules themselves are :mod:`wsproxy.liverules`, shared with the client.
"""
