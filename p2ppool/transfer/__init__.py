"""The transfer plane: one dilated magic-wormhole session per (client pool, worker) pair.

:mod:`.session` opens the wormhole (through the mailbox server, direct or via the transit
relay), carries length-prefixed frames (:mod:`.framing`, pure) whose meaning is
:mod:`.session_protocol` (pure: Open, Ready, Refuse, Func, Forget, Task, Result, Lost,
Cancel, Close), all on the process's one Twisted :mod:`.reactor` thread, with the dilation
fixes of :mod:`.wormhole_patches`.  :mod:`.servers` runs a real mailbox server and transit
relay on 127.0.0.1 for LocalCluster and tests::

    client                                   worker
    Open ───────────────────────────────────▶ Ready | Refuse
    Func, Task ... ─────────────────────────▶
               ◀──────────────────────────── Result | Lost
    Close ──────────────────────────────────▶

May import: the base modules only.  Pure: framing, session_protocol.
"""
