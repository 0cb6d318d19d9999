"""The shipping plane: what a job needs on a worker besides its pickled function.

Client side, :mod:`.modules` finds the caller's own modules (a ``helpers.py`` beside the
script, a local package) and packs their source into a :mod:`.bundle` (pure, never
pickled).  Worker side, :mod:`.cache` keeps one read-only directory per bundle on task
processes' ``sys.path``, and :mod:`.environments` installs a job's ``requirements=``
(parsed and compared by :mod:`.requirements`, pure) where the volunteer allows it::

    client: imported modules ─▶ bundle (digest) ─Open/Func frames─▶ worker: cache/<digest>/
            requirements=[...] ─────────────────────────────────▶ environments/<key>/

May import: the base modules only.
"""
