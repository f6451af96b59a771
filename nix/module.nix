# NixOS module: Pyron behind NGINX with TLS, Redis and MongoDB (or FerretDB) on the same
# machine, both binaries as hardened Type=notify services logging to journald.
#
#   services.pyron = {
#     enable = true;
#     domain = "alerts.example.com";          # ACME certificate; unset: self-signed
#     acmeEmail = "you@example.com";
#     webhookTokenFile = "/var/lib/pyron-secrets/webhook-token";
#   };
{ config
, lib
, pkgs
, ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    optional
    types
    ;

  cfg = config.services.pyron;
  settingsFormat = pkgs.formats.toml { };

  socketPath = "/run/pyron/api.sock";
  redis = config.services.redis.servers.pyron;
  redisGroup = redis.group;
  mongoPort = 27017;
  storeUnits =
    [ "redis-pyron.service" ]
    ++ optional (cfg.database == "mongodb") "mongodb.service"
    ++ optional (cfg.database == "ferretdb") "ferretdb.service";

  finalSettings = import ./settings.nix {
    redisSocket = redis.unixSocket;
    inherit mongoPort;
    inherit (cfg) allowedSenders settings;
  };
  configFile = settingsFormat.generate "pyron.toml" finalSettings;
  bodyLimit = finalSettings.body_limit or 65536;

  hardening =
    unit:
    import ./hardening.nix {
      inherit unit;
      inherit (cfg) ipAddressAllow;
    };

  selfSigned = "/var/lib/pyron-tls";

  # FerretDB 1.x keeps its data in SQLite, with nothing else to run. FerretDB 2 dropped
  # that backend: it needs PostgreSQL with the DocumentDB extension, which this module
  # does not set up. Which one nixpkgs ships decides whether `database = "ferretdb"` can
  # work (an assertion says so).
  ferretdb = config.services.ferretdb.package or pkgs.ferretdb;
  ferretdbHasSqlite = lib.versionOlder (lib.getVersion ferretdb) "2";

  # Both units: notify, watchdog, restart, the shared configuration file.
  common = {
    Type = "notify";
    NotifyAccess = "main";
    WatchdogSec = "30s";
    TimeoutStartSec = "5min";
    Restart = "always";
    RestartSec = "2s";
    # Redis listens on a unix socket only, for its group.
    SupplementaryGroups = [ redisGroup ];
  };
in
{
  options.services.pyron = {
    enable = mkEnableOption "Pyron, a webhook receiver for trading alerts";

    package = mkPackageOption pkgs "pyron" { };

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "alerts.example.com";
      description = ''
        The domain senders post to. When set, NGINX gets a certificate for it from Let's
        Encrypt (ACME; point the domain's DNS at this machine first). When unset, NGINX
        answers any name with a self-signed certificate, which TradingView does not
        accept: set a domain for production.
      '';
    };

    acmeEmail = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "you@example.com";
      description = "Contact address for Let's Encrypt; required with `domain`.";
    };

    webhookTokenFile = mkOption {
      type = types.str;
      example = "/var/lib/pyron-secrets/webhook-token";
      description = ''
        A file holding the webhook secret (8 or more of `A-Z a-z 0-9 - . _ ~`), handed to
        pyron-api as the systemd credential `webhook-token`. Keep it out of the Nix store:
        a path on the machine, or one managed by agenix or sops-nix.
      '';
    };

    adminTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/pyron-secrets/admin-token";
      description = ''
        A file holding the operator's secret for the dead-letter API (16 or more
        characters), as the credential `admin-token`. Unset: the admin API is off.
      '';
    };

    database = mkOption {
      type = types.enum [
        "mongodb"
        "ferretdb"
      ];
      default = "mongodb";
      description = ''
        The MongoDB wire server on this machine. `mongodb` uses `pkgs.mongodb-ce`, which
        is unfree: allow it with
        `nixpkgs.config.allowUnfreePredicate = pkg: builtins.elem (lib.getName pkg) [ "mongodb-ce" ];`.
        `ferretdb` uses FerretDB (free) with its SQLite backend, which only FerretDB 1.x
        has: with a nixpkgs whose FerretDB is 2.x (PostgreSQL and DocumentDB only) the
        configuration is refused with an explanation; use `mongodb` there.
      '';
    };

    allowedSenders = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "52.89.214.238"
        "34.212.75.30"
        "54.218.53.128"
        "52.32.178.7"
      ];
      description = ''
        Addresses or networks allowed to post alerts (others get 403); empty allows
        anyone. TradingView sends from a few fixed addresses: see its documentation.
      '';
    };

    rateLimit = {
      rate = mkOption {
        type = types.ints.positive;
        default = 50;
        description = ''
          Requests per second one address may make to /webhook. TradingView sends every
          user's alerts from the same few addresses: keep it generous.
        '';
      };
      burst = mkOption {
        type = types.ints.positive;
        default = 200;
        description = "Requests over the rate one address may make at once before 429.";
      };
    };

    ipAddressAllow = mkOption {
      type = types.listOf types.str;
      default = [ "localhost" ];
      description = ''
        Where the two services may connect over IP (systemd `IPAddressAllow=`). The stores
        are on this machine; add addresses when `settings` points them elsewhere.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = {
        log = "info,pyron=debug";
        body_limit = 131072;
        worker_batch_size = 200;
      };
      description = ''
        Pyron's configuration, written to /etc/pyron/pyron.toml; keys are those of the
        README's configuration table, in lower case without `PYRON_`. The module sets the
        stores (`redis_url`, `mongo_uri`, `mongo_db`), `trusted_proxies` and
        `allowed_senders`; values here win. Secrets do not belong here: use
        `webhookTokenFile` and `adminTokenFile`.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.domain == null || cfg.acmeEmail != null;
        message = "services.pyron.acmeEmail is required when services.pyron.domain is set";
      }
      {
        assertion = cfg.database != "ferretdb" || ferretdbHasSqlite;
        message = ''
          services.pyron.database = "ferretdb" needs FerretDB 1.x and its SQLite backend, but
          this nixpkgs has FerretDB ${lib.getVersion ferretdb}, which runs only on PostgreSQL
          with the DocumentDB extension (not set up by this module). Use
          services.pyron.database = "mongodb".
        '';
      }
    ];

    environment.etc."pyron/pyron.toml".source = configFile;

    systemd.sockets.pyron-api = {
      description = "Pyron webhook receiver socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ socketPath ];
      socketConfig = {
        SocketGroup = config.services.nginx.group;
        SocketMode = "0660";
      };
    };

    systemd.services.pyron-api = {
      description = "Pyron webhook receiver (pyron-api)";
      wantedBy = [ "multi-user.target" ];
      requires = [ "pyron-api.socket" ];
      after = [
        "network.target"
        "pyron-api.socket"
      ] ++ storeUnits;
      wants = storeUnits;
      environment.PYRON_CONFIG = "/etc/pyron/pyron.toml";
      restartTriggers = [ configFile ];
      serviceConfig =
        hardening "api"
        // common
        // {
          ExecStart = "${cfg.package}/bin/pyron-api";
          LoadCredential = [
            "webhook-token:${cfg.webhookTokenFile}"
          ] ++ optional (cfg.adminTokenFile != null) "admin-token:${cfg.adminTokenFile}";
        };
    };

    systemd.services.pyron-worker = {
      description = "Pyron alert worker (pyron-worker)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ] ++ storeUnits;
      wants = storeUnits;
      environment = {
        PYRON_CONFIG = "/etc/pyron/pyron.toml";
        # A stable consumer name: a restarted worker takes back its own pending jobs.
        PYRON_WORKER_CONSUMER = "%H-worker";
      };
      restartTriggers = [ configFile ];
      serviceConfig =
        hardening "worker"
        // common
        // {
          ExecStart = "${cfg.package}/bin/pyron-worker";
        };
    };

    services.redis.servers.pyron = {
      enable = true;
      # Unix socket only; every job on disk before Redis answers (see README, Delivery).
      port = 0;
      unixSocketPerm = 660;
      appendOnly = true;
      appendFsync = "always";
      save = [ ];
      settings.maxmemory-policy = "noeviction";
    };

    services.mongodb = mkIf (cfg.database == "mongodb") {
      enable = true;
      package = pkgs.mongodb-ce;
      bind_ip = "127.0.0.1";
    };

    services.ferretdb = mkIf (cfg.database == "ferretdb") {
      enable = true;
      settings = {
        FERRETDB_HANDLER = "sqlite";
        FERRETDB_LISTEN_ADDR = "127.0.0.1:${toString mongoPort}";
        FERRETDB_TELEMETRY = "disable";
      };
    };

    # Without a domain, a self-signed certificate made once on the machine.
    systemd.services.pyron-tls-selfsigned = mkIf (cfg.domain == null) {
      description = "Self-signed certificate for Pyron's NGINX";
      wantedBy = [ "multi-user.target" ];
      before = [ "nginx.service" ];
      requiredBy = [ "nginx.service" ];
      path = [ pkgs.openssl ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        StateDirectory = "pyron-tls";
        StateDirectoryMode = "0750";
        UMask = "0027";
      };
      script = ''
        if [ ! -s ${selfSigned}/key.pem ]; then
          openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -days 3650 -subj "/CN=pyron" \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout ${selfSigned}/key.pem -out ${selfSigned}/cert.pem
        fi
        chgrp -R ${config.services.nginx.group} ${selfSigned}
      '';
    };

    security.acme = mkIf (cfg.domain != null) {
      acceptTerms = true;
      defaults.email = cfg.acmeEmail;
    };

    services.nginx = {
      enable = true;
      recommendedTlsSettings = true;
      recommendedOptimisation = true;
      # The secret of /webhook/<token>, and any query string on /webhook, never reach a
      # log: every server logs in this format.
      commonHttpConfig = ''
        map $request_uri $pyron_logged_uri {
            ~^/webhook/        /webhook/[redacted];
            ~^/webhook(\?|$)   /webhook;
            default            $request_uri;
        }
        log_format pyron '$remote_addr [$time_iso8601] "$request_method $pyron_logged_uri $server_protocol" '
                         '$status $body_bytes_sent $request_time "$http_user_agent"';
        access_log /var/log/nginx/access.log pyron;
      '';
      appendHttpConfig = ''
        limit_req_zone $binary_remote_addr zone=pyron_webhook:10m rate=${toString cfg.rateLimit.rate}r/s;
        limit_req_status 429;
        limit_req_log_level warn;
        upstream pyron_api {
            server unix:${socketPath};
            keepalive 32;
        }
      '';
      virtualHosts.pyron = {
        serverName = if cfg.domain != null then cfg.domain else "_";
        default = true;
        forceSSL = true;
        enableACME = cfg.domain != null;
        sslCertificate = mkIf (cfg.domain == null) "${selfSigned}/cert.pem";
        sslCertificateKey = mkIf (cfg.domain == null) "${selfSigned}/key.pem";
        extraConfig = ''
          default_type application/json;
          add_header Strict-Transport-Security "max-age=63072000" always;

          # Slow or oversized senders are cut off here, before they reach pyron-api.
          client_max_body_size ${toString bodyLimit};
          client_body_buffer_size ${toString bodyLimit};
          client_header_timeout 10s;
          client_body_timeout 10s;
          send_timeout 10s;
          large_client_header_buffers 4 8k;

          ${builtins.readFile ../dev/nginx-errors.conf}

          proxy_http_version 1.1;
          proxy_set_header Connection "";
          proxy_set_header Host $host;
          # This is the edge: whatever forwarding headers the sender wrote are replaced.
          proxy_set_header X-Real-IP $remote_addr;
          proxy_set_header X-Forwarded-For $remote_addr;
          proxy_set_header X-Forwarded-Proto $scheme;
          proxy_connect_timeout 2s;
          proxy_send_timeout 5s;
          proxy_read_timeout 5s;
        '';
        locations."/webhook" = {
          proxyPass = "http://pyron_api";
          recommendedProxySettings = false;
          extraConfig = ''
            limit_req zone=pyron_webhook burst=${toString cfg.rateLimit.burst} nodelay;
            # Error lines quote the request line, secret and all: keep only the critical.
            error_log /var/log/nginx/error.log crit;
          '';
        };
        locations."/" = {
          proxyPass = "http://pyron_api";
          recommendedProxySettings = false;
        };
      };
    };

    # 80 (ACME and the redirect to HTTPS) and 443; SSH's own module opens 22.
    networking.firewall.allowedTCPPorts = [
      80
      443
    ];
  };
}
