-- postern's default configuration: the demo that `make run` starts.
-- Every key is described in README.md ("Configuration reference").
return {
  server_name = "postern.local",
  policy = "scripts/static_users.lua",  -- users in scripts/users.txt
  log_level = "info",
  error_log = "stderr",
  proxy_pass_error_message = true,
  timeout = 60,            -- idle client before login
  proxy_timeout = 600,     -- idle session while relaying
  max_errors = 5,
  tls = {                  -- scripts/demo-cert makes this self-signed pair
    certificate = ".demo/cert.pem", key = ".demo/key.pem",
  },
  listen = {
    { address = "127.0.0.1:1143", protocol = "imap", auth = { "plain", "login" }, starttls = "on" },
    { address = "127.0.0.1:1110", protocol = "pop3", auth = { "user", "plain", "login" }, starttls = "on" },
    { address = "127.0.0.1:1587", protocol = "smtp", auth = { "plain", "login" }, starttls = "on" },  -- submission
    { address = "127.0.0.1:1993", protocol = "imap", tls = true },
    { address = "127.0.0.1:1995", protocol = "pop3", tls = true },
    { address = "127.0.0.1:1465", protocol = "smtp", tls = true },
    { address = "127.0.0.1:4190", protocol = "sieve", starttls = "on" },  -- ManageSieve
  },
}
