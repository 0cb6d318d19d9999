"""Every default number p2ppool uses, in one place.  Durations are seconds (``*_S``)."""

from __future__ import annotations

# --- Pool ---------------------------------------------------------------------------
#: Seconds without any peer offer before the Pool runs chunks on local processes.
FALLBACK_S: float = 3.0
#: Attempts per chunk before ChunkFailed (a lost peer or child costs one attempt).
MAX_ATTEMPTS: int = 3

# --- Board (SSH pub/sub) -------------------------------------------------------------
BOARD_HOST: str = "pipe.pico.sh"
BOARD_PORT: int = 22
#: A board line (one JSON message) is at most this many bytes, newline included.
MAX_LINE_BYTES: int = 4096
#: Time-to-live of a board message unless the type says otherwise.
MESSAGE_TTL_S: float = 60.0
#: Reconnect backoff: first delay, factor, cap; plus up to JITTER of each delay.
RECONNECT_FIRST_S: float = 0.5
RECONNECT_FACTOR: float = 2.0
RECONNECT_MAX_S: float = 30.0
RECONNECT_JITTER: float = 0.25
SSH_CONNECT_TIMEOUT_S: float = 10.0

# --- Wormhole (data plane) -------------------------------------------------------------
#: Public magic-wormhole servers; self-hosters and tests override both.
RELAY_URL: str = "ws://relay.magic-wormhole.io:4000/v1"
TRANSIT_HINT: str = "tcp:transit.magic-wormhole.io:4001"
APPID: str = "p2ppool.invalid/pool/v1"
#: Seconds to pair and dilate a fresh session before giving up.
SESSION_OPEN_TIMEOUT_S: float = 30.0
#: Heartbeat period on a session, and silence after which the peer is declared lost.
HEARTBEAT_S: float = 1.0
HEARTBEAT_DEADLINE_S: float = 5.0
#: Frames are written in pieces of this size (one huge write is quadratic in dilation 0.24).
WRITE_PIECE_BYTES: int = 64 * 1024

# --- Worker ----------------------------------------------------------------------------
#: Largest payload (function, chunk or result) a worker accepts by default.
MAX_PAYLOAD_BYTES: int = 256 * 1024 * 1024
#: Default per-task time limit on a worker (None: unlimited).
MAX_TASK_S: float | None = None
#: How long a worker announces itself for by default (None: until stopped).
WORKER_TTL_S: float | None = None

# --- Board protocol, client, host and status (issue 3) -------------------------------------
#: A message stamped further than this in the future is dropped (peers' clocks differ).
MAX_CLOCK_SKEW_S: float = 300.0
#: Seconds a board write may block (the server not reading) before the session is dropped.
BOARD_SEND_TIMEOUT_S: float = 10.0
#: Seconds between SSH keepalives from the board client (notices dead connections).
BOARD_KEEPALIVE_S: float = 15.0
#: `p2ppool host`: default cluster lifetime, and how often the cluster is re-announced.
HOST_TTL_S: float = 14 * 24 * 3600.0
HOST_ANNOUNCE_S: float = 30.0
#: `p2ppool status`: seconds to listen for announcements by default.
STATUS_WAIT_S: float = 3.0

# --- Transfer layer (reactor, wormhole sessions, local wormhole servers) ---------------
#: Largest inbound frame a session accepts unless told otherwise (the header is checked
#: before any payload is buffered).
MAX_FRAME_BYTES: int = MAX_PAYLOAD_BYTES + 1024 * 1024
#: Seconds a session's close() waits for the peer and the mailbox before giving up.
SESSION_CLOSE_TIMEOUT_S: float = 3.0
#: Seconds to wait for the local mailbox server + transit relay to report readiness.
WORMHOLE_SERVERS_START_TIMEOUT_S: float = 20.0
#: Seconds to wait for them to exit after SIGTERM before SIGKILL.
WORMHOLE_SERVERS_STOP_TIMEOUT_S: float = 5.0
