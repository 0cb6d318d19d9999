"""The local plane: a whole cluster on 127.0.0.1 (board, wormhole servers, workers) for
tests, demos and ``p2ppool local``.

:class:`~.cluster.LocalCluster` starts workers in their own directories (so they see only
what a remote machine would: code the pool ships), all bound and advertised on 127.0.0.1.
:mod:`.processes` is its children's plumbing, :mod:`.command` is ``p2ppool local`` and
:mod:`.demo` is ``p2ppool demo``.

May import: the base modules and the board, transfer and pool planes (workers run as
separate processes, ``python -m p2ppool.worker``).
"""
