"""The demo's tooling, kept in the repository and out of the installed
package: the embedded MongoDB-compatible server (:mod:`demo.embedded`,
SecantusDB as a subprocess; also used by the tests and the benchmark) and
the demo writer (:mod:`demo.writer`). The repository's ``gunicorn.conf.py``
starts both for ``python3 dev.py demo``.
"""
