"""Run the bundle behind its gateway: TorchServe (token auth on, 127.0.0.1 only) and nginx in front, supervised.

    python -m gateway                     # in the container (the image's entrypoint, under tini)
    DIGITS_CLIENT_TOKEN=... python -m gateway --state-dir /tmp/digits-gw   # on the host, from the repo root
    python -m gateway --address 127.0.0.1 --no-client-credential ...      # make web: this machine only

What it does:
  * reads the client credential(s) (DIGITS_CLIENT_TOKEN_FILE, one per line, or DIGITS_CLIENT_TOKEN) and refuses
    to start without one; clients send "Authorization: Bearer <credential>" to the gateway. With
    --no-client-credential it asks clients for none, and then only listens on a loopback address: only programs
    on this machine reach it (a developer's own web page, `make web`), never the network. The credential file is
    read again every second: a changed set reaches nginx at once (a bad file is refused, the current set stays);
  * serves the web page (web/) at / on the REST port, same-origin with the API it calls;
  * starts TorchServe in the foreground on internal loopback ports, then nginx (gateway/nginx.conf.template);
  * hands nginx TorchServe's inference key and rotates TorchServe's keys at half their lifetime, holding new
    requests for the moment of the swap so that none is refused (gateway.lua explains the hold). A rotation that
    fails is logged, counted (digits_gateway_key_rotation_failures_total) and tried again while the current keys
    stay valid; SIGUSR1 rotates them now;
  * exits non-zero as soon as TorchServe or nginx dies (the other is stopped first), so an orchestrator restarts
    the whole unit;
  * on SIGTERM or SIGINT drains: readiness turns 503, DRAIN_SECONDS later nginx stops accepting connections and
    finishes the requests it has, then TorchServe stops. Exit status 0.

Every setting has an environment variable (the container's interface) and a flag; --help lists the defaults.

The package: settings.py (command line, environment, credentials), render.py (the configs it writes), keys.py
(TorchServe's keys in nginx, their rotation; the admin socket), supervisor.py (start, watch, drain, stop).
TorchServe itself is started and stopped by serving.launch, like every TorchServe of the bundle.
"""
