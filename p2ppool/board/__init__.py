"""The board plane: the authenticated pub/sub over SSH (pico.sh ``pipe``) and its lines.

Client side: :mod:`.client` keeps one ``pipe <topic>`` session open across drops (connecting
as ``ssh`` would, :mod:`.sshconfig`, on the one connection per process and target that
:mod:`.transports` shares among sessions); :mod:`.protocol` (pure) is the JSON lines peers write
(Hello, Want, Offer, Accept, Withdraw, Bye...) with their validation.  Server side
(``p2ppool board``): :mod:`.server` accepts SSH connections (paramiko), one
:mod:`.handlers` thread runs each exec command, and the :mod:`.hub` owns the shared state
(the pure :mod:`.state`: topics, access lists, buffers), parsed by :mod:`.commands` (pure)::

    ssh client ─▶ server (Transport) ─exec─▶ handlers.ExecSession ─▶ hub ─▶ state (pure)
                                                    ◀── fan-out to idle receivers ──┘

May import: the base modules only.  Pure: protocol, state, commands.
"""
