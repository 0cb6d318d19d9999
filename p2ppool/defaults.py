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
#: Most source a client ships to workers in one code bundle (its own modules, uncompressed);
#: a larger set is not shipped, with a warning that says how to leave modules out.
MAX_CODE_BUNDLE_BYTES: int = 50 * 1024 * 1024
#: Most source a worker unpacks from one client's code bundle (a larger one is refused).
WORKER_MAX_CODE_BYTES: int = 64 * 1024 * 1024
#: Code bundles a worker keeps on disk once no session uses them (least recently used go).
WORKER_CODE_BUNDLES_KEPT: int = 8
#: Size bound of a worker's cache of per-job package directories (--install-cache-mb).
WORKER_INSTALL_CACHE_BYTES: int = 5_000 * 1_000_000
#: Seconds one install of a job's requirements may take on a worker.
WORKER_INSTALL_TIMEOUT_S: float = 900.0
#: Seconds after a failed install before the same requirements are tried again.
WORKER_INSTALL_RETRY_S: float = 300.0
#: Processes the sandboxed tasks of one session may run at once (--max-task-processes).
WORKER_MAX_TASK_PROCESSES: int = 256
#: An idle sandboxed worker keeps its task processes started for the next session (as many
#: as it has slots; they wait for their settings): a session then does not wait the tens of
#: milliseconds a sandboxed interpreter takes to start (``--no-spare-sandboxes``: none).
WORKER_SPARE_SANDBOXES: bool = True
#: Default per-task time limit on a worker (None: unlimited).
MAX_TASK_S: float | None = None
#: How long a worker announces itself for by default (None: until stopped).
WORKER_TTL_S: float | None = None

# --- Board protocol, client, host and status (issue 3) -------------------------------------
#: A message stamped further than this in the future is dropped (peers' clocks differ).
MAX_CLOCK_SKEW_S: float = 300.0
#: A signed board line stamped more than this long ago is dropped as a possible replay,
#: whatever its ttl (offers live 10 s, so peers' clocks must agree far better than this).
REPLAY_WINDOW_S: float = 120.0
#: Senders whose last sequence number a board reader remembers (against replays; LRU).
REPLAY_SENDERS_KEPT: int = 4096
#: Least seconds between two log lines about dropped unauthenticated board lines.
AUTH_DROP_LOG_S: float = 60.0
#: Seconds a board write may block (the server not reading) before the session is dropped.
BOARD_SEND_TIMEOUT_S: float = 10.0
#: Seconds between SSH keepalives from the board client (notices dead connections).
BOARD_KEEPALIVE_S: float = 15.0
#: Seconds a process keeps its SSH connection to a board target after the last session on
#: it closed, so that the next pool (a script that opens pools one after another, emcee or
#: scipy opening one per run) reuses it instead of paying a new key exchange (~50-100 ms).
#: 30 s covers the gap between consecutive pools of a script and is short enough that an
#: idle process does not hold a board connection (a server slot, no session) for long: two
#: keepalives at most.  Interpreter exit closes lingering connections at once (atexit).
#: 0 or less: close at the last release.
BOARD_IDLE_LINGER_S: float = 30.0
#: Seconds interpreter exit waits for lingering board connections to close (a gone server
#: must not hold the exit up; the kernel closes what is left).
BOARD_EXIT_CLOSE_S: float = 2.0
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

# --- Local engine and Pool manager (execution/engine.py, pool/api.py) -----------------------------
#: Tasks a child process may hold at once: the running one plus prefetched ones.
ENGINE_TASKS_PER_PROCESS: int = 2
#: Prefetch only while tasks take less than this on average (a long task would strand the
#: prefetched one behind it while another child idles), ...
ENGINE_PREFETCH_BELOW_S: float = 0.005
#: ... and only messages up to this size (an idle child always reads, so big ones wait).
ENGINE_PREFETCH_MAX_BYTES: int = 64 * 1024
#: Functions a child keeps unpickled (one per recent job); older ones are dropped.
ENGINE_FUNCTIONS_PER_PROCESS: int = 16
#: Seconds to wait for children to exit on close/terminate before SIGKILL.
ENGINE_JOIN_S: float = 5.0
#: Pipe buffer between the engine and each child (Linux; capped by pipe-max-size).
ENGINE_PIPE_BYTES: int = 1024 * 1024
#: imap/imap_unordered read this many chunks per free slot ahead of the running ones.
READ_AHEAD_PER_SLOT: int = 2

# --- Worker board behaviour and shutdown (worker/peer.py, worker/cli.py) --------------------------
#: Seconds a worker's offer stays valid without an Accept (its slots are reserved meanwhile).
OFFER_TTL_S: float = 10.0
#: Seconds between a worker's periodic Hello messages, and their time-to-live.
HELLO_INTERVAL_S: float = 30.0
HELLO_TTL_S: float = 90.0
#: After the first SIGINT/SIGTERM (or --ttl), seconds in-flight tasks may take to finish
#: before they are killed and reported lost (retry elsewhere).
WORKER_GRACE_S: float = 30.0
#: Seconds a worker waits for the client's Open frame after the wormhole session opened.
WORKER_OPEN_FRAME_TIMEOUT_S: float = 30.0

# --- Recruiting workers for a client job (cluster/recruit.py, cluster/backend.py, local/cluster.py)
#: Seconds between repeated Wants while a job still wants slots.
RECRUIT_WANT_REPEAT_S: float = 5.0
#: Least seconds between two Wants (a new worker's Hello or a higher demand asks sooner).
RECRUIT_WANT_MIN_INTERVAL_S: float = 0.5
#: Most seconds to gather offers before choosing among them (larger offers win): a pool
#: may wait this long for its first peer (issue 6: 0.1 s was a third of opening a pool).
RECRUIT_OFFER_WINDOW_S: float = 0.03
#: ... but it chooses as soon as no offer has come for this long (the burst of answers to
#: its Want is over: on one machine or a LAN they all come within a few milliseconds).
RECRUIT_OFFER_QUIET_S: float = 0.01
#: Seconds an accepted worker has to open the session and answer Ready.
RECRUIT_ACCEPT_TIMEOUT_S: float = 15.0
#: An offer is accepted only while it has at least this many seconds to live.
RECRUIT_OFFER_MARGIN_S: float = 2.0
#: Backoff before retrying a worker whose session failed: first, factor, cap.
RECRUIT_RETRY_FIRST_S: float = 2.0
RECRUIT_RETRY_FACTOR: float = 2.0
RECRUIT_RETRY_MAX_S: float = 60.0
#: Time-to-live of a client's Want on the board.
RECRUIT_WANT_TTL_S: float = 30.0
#: Seconds ClusterBackend.close()/terminate() wait for sessions and the board to close.
REMOTE_CLOSE_TIMEOUT_S: float = 5.0
#: Seconds LocalCluster waits for its servers and workers to become ready.
LOCALCLUSTER_START_TIMEOUT_S: float = 60.0
#: Seconds LocalCluster gives each child to exit after SIGTERM before SIGKILL.
LOCALCLUSTER_STOP_TIMEOUT_S: float = 5.0

# --- Board server (p2ppool board; see board/state.py for the policies) ------------------
#: Bytes queued for one reader before writers wait for it (then the slow-reader grace runs).
BOARD_MAX_BUFFER_BYTES: int = 4 * 1024 * 1024
#: A reader whose full buffer keeps writers waiting this long is disconnected (exit 1).
BOARD_SLOW_READER_GRACE_S: float = 10.0
#: Concurrent sessions (pub/sub/pipe) one SSH key may hold.
BOARD_MAX_SESSIONS_PER_KEY: int = 256
#: Longest exec command the board accepts.
BOARD_MAX_COMMAND_BYTES: int = 1024
#: Concurrent TCP connections, authenticated or not.
BOARD_MAX_CONNECTIONS: int = 2048
#: Period of the ping@pico.sh channel requests that detect dead peers (None: off).
BOARD_PING_INTERVAL_S: float = 5.0
#: How long a final error line may wait for a client that is not reading.
BOARD_FLUSH_TIMEOUT_S: float = 10.0
#: A connection that has not authenticated this long after connecting is closed.
BOARD_AUTH_TIMEOUT_S: float = 30.0

# --- Hardening (issue 7) ---------------------------------------------------------------------
#: Messages one SSH key may publish per second, sustained, across all of its sessions, and
#: how many it may send at once above that (a token bucket).  A message is one read of the
#: writer's stream (a write of up to 32 KiB: a p2ppool board line is one write).  Over the
#: limit the session gets "message rate limit exceeded ..." on stderr and is closed (exit 1).
BOARD_MESSAGES_PER_S: float = 100.0
BOARD_MESSAGE_BURST: int = 2000

# --- Memory of a long-lived client pool (the soak's leak hunt) ----------------------------
#: Distinct pickled functions a cluster pool remembers a wire key for (least recently used
#: forgotten first; a forgotten one seen again gets a new key and is sent again).
CLUSTER_FUNC_KEYS_KEPT: int = 256

# --- Functions a client keeps on a worker per session (cluster/backend.py) ------------------------
#: Distinct pickled functions a worker holds for one session; the least recently used one
#: is dropped (Forget frame) and sent again if named later.  A pool that maps a new
#: ``functools.partial`` each time would otherwise fill the worker's memory.
REMOTE_FUNCTIONS_PER_SESSION: int = 32
#: The most functions a worker holds for one session: a client that sends more without
#: Forget frames (a misbehaving one: ours keeps REMOTE_FUNCTIONS_PER_SESSION) is closed.
WORKER_FUNCTIONS_PER_SESSION: int = 256
#: ... and the most bytes of functions (``--max-functions-mb``; never less than the payload
#: limit, so one function of any allowed size fits).  The worker says it in Ready, and a
#: client keeps within it (Forget before Func); a session over it is closed (issue 17).
WORKER_FUNCTION_BYTES_PER_SESSION: int = MAX_PAYLOAD_BYTES
#: Tasks a session may have in flight on a worker beyond its slots (a p2ppool client sends
#: at most REMOTE_TASKS_PREFETCH beyond them, capped at this value; the worker's count of a
#: task ends before its Result or Lost is sent, so the client's count is never below it); a
#: Task past them closes the session with a protocol error (issue 17).
WORKER_TASKS_PREFETCH: int = 2
#: A cluster pool sends a worker session that many tasks beyond its slots (at most
#: WORKER_TASKS_PREFETCH) while that session's tasks come back quickly: the next tasks
#: then wait on the worker instead of a round trip each (issue 16) ...
REMOTE_TASKS_PREFETCH: int = WORKER_TASKS_PREFETCH
#: ... "quickly": the average round trip of its recent tasks is below this.  A slower task
#: stops the prefetch at once, so that no task waits behind a long one there while
#: another worker could run it.
REMOTE_PREFETCH_BELOW_S: float = 0.02
#: Batches (issue 16): a map's chunks that go to one worker session in one dispatch travel as
#: one task, as many as the same function's chunks ran in this many seconds in its last map
#: (the first map of a function is not batched) ...
BATCH_TASK_S: float = 0.05
#: ... and at most this many.
BATCH_MOST_CHUNKS: int = 32
#: A batch holds at least this much of its chunks' time before a map is spread over more
#: workers: a task costs about a millisecond of CPU on each side whatever it carries, so a
#: map with less work than that in all runs fastest as one task on one worker.
BATCH_LEAST_S: float = 0.002

# --- One member cannot stall the cluster (issue 17; worker/peer.py, cluster/recruit.py) -----------
#: Wants a worker remembers per sender (the newest win) and senders it keeps any state for
#: (least recently heard forgotten first): forged ids cannot grow a worker's memory.
WORKER_WANTS_PER_SENDER: int = 4
WORKER_SENDERS_KEPT: int = 256
#: Longest time-to-live a worker honours, per message type, counted from arrival (a client
#: sends Wants for RECRUIT_WANT_TTL_S, peers say Hello for HELLO_TTL_S).
WORKER_WANT_TTL_MAX_S: float = 120.0
WORKER_HELLO_TTL_MAX_S: float = 300.0
#: An offer not accepted this long after it was made may be withdrawn (its slots offered to
#: another sender's waiting Want); its sender then counts one unaccepted offer against it.
#: A p2ppool client accepts within RECRUIT_OFFER_WINDOW_S plus two board trips.
WORKER_OFFER_ANSWER_S: float = 2.0
#: Least seconds between two Hellos of a worker (one Hello answers every newcomer since
#: the last), and the messages per second (with a burst) a worker writes on the board in all.
WORKER_HELLO_MIN_INTERVAL_S: float = 1.0
WORKER_MESSAGES_PER_S: float = 5.0
WORKER_MESSAGE_BURST: int = 20
#: Workers a client job keeps any state for (least recently heard, idle ones forgotten first).
RECRUIT_WORKERS_KEPT: int = 256

# --- No silent worker holds a map (issue 17; pool/scheduler.py) -----------------------------------
#: A chunk runs again on another idle executor (speculatively: the first result wins, the
#: other run is cancelled) once it has run SPECULATE_FACTOR times as long as the median of
#: its job's finished chunks (at least SPECULATE_AFTER of them), and at least
#: SPECULATE_MIN_S; or once it has run ``Pool(task_timeout=...)`` seconds.
SPECULATE_FACTOR: float = 4.0
SPECULATE_MIN_S: float = 2.0
SPECULATE_AFTER: int = 1
#: Finished chunks per job whose durations are remembered for the median.
SPECULATE_SAMPLES: int = 32
#: Default of ``Pool(task_timeout=...)``: None (only the median rule applies).
TASK_TIMEOUT_S: float | None = None
