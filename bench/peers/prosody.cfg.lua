-- Prosody 0.12 (Debian bookworm) for bench/compare.py. Not for production: loopback only,
-- no in-band registration, no s2s, no HTTP.
--
-- compare.py copies this file into the run directory and replaces:
--   @RUN_DIR@          the run directory (data, certificate, log)
--   @AUTHENTICATION@   internal_plain or internal_hashed, to match the benchmark's SASL
--                      mechanism (see "Accounts" in bench/README.md)

-- compare.py runs every server as the user that runs it, root on a fresh machine, and
-- mod_posix (loaded on every POSIX system) refuses root without this.
run_as_root = true

-- Port 5322 serves the "--tls none" runs, 5323 the "--tls starttls" runs. Prosody cannot
-- offer STARTTLS on one c2s port and not on another, so both offer it and neither
-- requires it: the load generator decides.
interfaces = { "127.0.0.1" }
c2s_ports = { 5322, 5323 }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
ssl = {
	certificate = "@RUN_DIR@/certs/selfsigned_cert.pem";
	key = "@RUN_DIR@/certs/selfsigned_key.pem";
}

-- The default accept queue (128) drops connections in a login burst. Nagle's algorithm
-- is on by default here (and off in our server and ejabberd): with the client's delayed
-- ACKs it holds a small stanza back for about 40 ms, which a latency benchmark at low
-- rates would measure instead of Prosody.
network_settings = {
	tcp_backlog = 1024;
	nagle = false;
}

-- One file per account and per roster under data_path: compare.py writes the
-- accounts/<user>.dat files itself, and for presence --roster-size the roster/<user>.dat
-- files (bench/roster_setup.py).
data_path = "@RUN_DIR@/data"
storage = "internal"
authentication = "@AUTHENTICATION@"
-- For internal_hashed: SCRAM-SHA-256 secrets, like ours (the default is SHA-1).
password_hash = "SHA-256"

log = { warn = "@RUN_DIR@/prosody.log" }

-- The modules our server has, the roster and presence included (mod_presence is loaded
-- by default). mod_limits (per-connection rate limits) is not loaded, so nothing
-- throttles a session. Offline storage and s2s are loaded by default and switched off
-- here; carbons, MAM, stream management and registration are simply not loaded.
modules_enabled = {
	"roster";
	"saslauth";
	"tls";
	"disco";
	"ping";
	"version";
}
modules_disabled = {
	"offline";
	"s2s";
	"s2s_auth_certs";
}

VirtualHost "localhost"
