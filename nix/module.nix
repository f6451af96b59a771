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
  localRedis = cfg.redis.createLocally;
  localDatabase = cfg.database != "external";
  mongoPort = 27017;
  storeUnits =
    optional localRedis "redis-pyron.service"
    ++ optional (cfg.database == "mongodb") "mongodb.service"
    ++ optional (cfg.database == "ferretdb") "ferretdb.service";

  finalSettings = import ./settings.nix {
    redisSocket = if localRedis then redis.unixSocket else null;
    mongoPort = if localDatabase then mongoPort else null;
    inherit (cfg) allowedSenders settings sources routes;
    destinations = cfg.destinations;
  };
  forwarding = cfg.routes != [ ];
  configFile = settingsFormat.generate "pyron.toml" finalSettings;
  bodyLimit = cfg.settings.body_limit;
  # Secrets handed to both services as systemd credentials.
  credentials =
    optional (cfg.redis.urlFile != null) "redis-url:${cfg.redis.urlFile}"
    ++ optional (cfg.mongoUriFile != null) "mongo-uri:${cfg.mongoUriFile}";

  hardening =
    unit:
    import ./hardening.nix {
      inherit unit;
      inherit (cfg) ipAddressAllow;
      forwarderAllow = cfg.forwarder.ipAddressAllow;
    };

  selfSigned = "/var/lib/pyron-tls";

  # dev/nginx-server.conf, the one copy of the server directives (nix/nginx-server.nix).
  serverConfig = import ./nginx-server.nix { inherit bodyLimit; };

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
  }
  // lib.optionalAttrs localRedis {
    # Redis listens on a unix socket only, for its group.
    SupplementaryGroups = [ redis.group ];
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
        "external"
      ];
      default = "mongodb";
      description = ''
        The MongoDB wire server. `external`: none on this machine; Pyron uses the one at
        the URI in `mongoUriFile`. `mongodb` uses `pkgs.mongodb-ce`, which
        is unfree: allow it with
        `nixpkgs.config.allowUnfreePredicate = pkg: builtins.elem (lib.getName pkg) [ "mongodb-ce" ];`.
        `ferretdb` uses FerretDB (free) with its SQLite backend, which only FerretDB 1.x
        has: with a nixpkgs whose FerretDB is 2.x (PostgreSQL and DocumentDB only) the
        configuration is refused with an explanation; use `mongodb` there.
      '';
    };

    mongoUriFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/pyron-secrets/mongo-uri";
      description = ''
        With `database = "external"`: a file holding the MongoDB URI (it may carry a
        password), handed to both services as the credential `mongo-uri`.
      '';
    };

    redis = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run Redis on this machine (unix socket only, `appendfsync always`). Off: Pyron
          uses the Redis at the URL in `redis.urlFile`, which must keep what it
          acknowledges the same way (see the README, Delivery).
        '';
      };
      urlFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/pyron-secrets/redis-url";
        description = ''
          Without a local Redis: a file holding the Redis URL (it may carry a password),
          handed to both services as the credential `redis-url`.
        '';
      };
    };

    nginx.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Put NGINX with TLS in front (HTTP redirects to HTTPS, per-address rate limit, the
        secret kept out of its logs, ACME when `domain` is set). Off: bring your own proxy
        to pyron-api's socket, /run/pyron/api.sock (group `socketGroup`).
      '';
    };

    socketGroup = mkOption {
      type = types.str;
      default = config.services.nginx.group;
      defaultText = lib.literalExpression "config.services.nginx.group";
      description = "The group that may connect to pyron-api's socket (the proxy's).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Open TCP 80 (ACME, the redirect to HTTPS) and 443 in the firewall.";
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

    sources = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            secretFile = mkOption {
              type = types.str;
              description = ''
                A file holding this source's secret (the webhook token rules apply),
                handed to pyron-api as the credential `source-<name>`.
              '';
            };
            allowedSenders = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
              description = "Addresses or networks that may use this source's secret.";
            };
            idempotencyField = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "The JSON field whose value makes this source's alerts' idempotency key.";
            };
            maxAgeSecs = mkOption {
              type = types.nullOr types.ints.positive;
              default = null;
              example = 30;
              description = "The maximum age of this source's deliveries, for routes that set none.";
            };
            clientCertificate = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "TradingView Webhooks";
              description = ''
                The common name of the client certificate NGINX must have verified for
                this source's alerts (needs `nginx.clientCertificateCA`).
              '';
            };
          };
        }
      );
      default = { };
      example = lib.literalExpression ''
        { tradingview = { secretFile = "/var/lib/pyron-secrets/tradingview"; }; }
      '';
      description = ''
        Senders, each with its own secret (`[[sources]]`). `webhookTokenFile` is the
        source `default`.
      '';
    };

    destinations = mkOption {
      type = types.attrsOf (
        types.submodule {
          freeformType = settingsFormat.type;
          options = {
            kind = mkOption {
              type = types.enum [
                "http"
                "telegram"
                "discord"
                "slack"
              ];
              description = "The protocol: a signed HTTP POST, or a chat.";
            };
            secretFile = mkOption {
              type = types.str;
              description = ''
                `http`: the signing secret (`whsec_...`); `telegram`: the bot token;
                `discord`, `slack`: the webhook URL. Handed to pyron-forwarder alone, as
                the credential `destination-<name>`.
              '';
            };
          };
        }
      );
      default = { };
      example = lib.literalExpression ''
        {
          bridge = { kind = "http"; url = "https://bridge.example.com/orders"; secretFile = "/var/lib/pyron-secrets/bridge"; };
          me = { kind = "telegram"; chat_id = "123456789"; secretFile = "/var/lib/pyron-secrets/telegram-bot"; };
        }
      '';
      description = ''
        Where routes deliver (`[destinations.<name>]`); keys besides `kind` and
        `secretFile` as in the README's Routes section (`url`, `chat_id`, `headers`,
        `rate_per_second`, `timeout_ms`, `max_attempts`, `breaker_failures`,
        `breaker_cooldown_ms`, `template`).
      '';
    };

    routes = mkOption {
      type = types.listOf (
        types.submodule {
          freeformType = settingsFormat.type;
          options = {
            name = mkOption {
              type = types.str;
              description = "The route's name (a-z, 0-9, - and _).";
            };
            destinations = mkOption {
              type = types.listOf types.str;
              description = "Names of `destinations`.";
            };
          };
        }
      );
      default = [ ];
      example = lib.literalExpression ''
        [ { name = "orders"; sources = [ "tradingview" ]; tickers = [ "BTC*" ]; destinations = [ "bridge" "me" ]; max_age_secs = 30; } ]
      '';
      description = ''
        Which processed alerts go where (`[[routes]]`): `sources`, `tickers`,
        `actions`, `strategies`, `intervals` filter; `max_age_secs` and `template` as in
        the README. With any route, pyron-forwarder runs.
      '';
    };

    forwarder.ipAddressAllow = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.10.0.5" ];
      description = ''
        Private addresses pyron-forwarder may reach besides the internet (a destination
        in the VPC). Link-local (the cloud's metadata service) and private networks are
        otherwise closed to it.
      '';
    };

    nginx.clientCertificateCA = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = ''
        A CA bundle for the client certificates NGINX asks for (`ssl_verify_client
        optional`): TradingView presents one over HTTPS. What NGINX verified reaches
        pyron-api, and sources with `clientCertificate` require it.
      '';
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          body_limit = mkOption {
            type = types.ints.between 1 4194304;
            default = 65536;
            description = ''
              Largest alert body in bytes; NGINX refuses larger ones before they reach
              pyron-api, with the same limit.
            '';
          };
          log = mkOption {
            type = types.str;
            default = "info";
            example = "info,pyron=debug";
            description = "Log filter (`PYRON_LOG`), as tracing's EnvFilter reads it.";
          };
        };
      };
      default = { };
      example = {
        log = "info,pyron=debug";
        body_limit = 131072;
        worker_batch_size = 500;
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
        assertion = (cfg.database == "external") == (cfg.mongoUriFile != null);
        message = "services.pyron.mongoUriFile is required with database = \"external\", and only then";
      }
      {
        assertion = localRedis == (cfg.redis.urlFile == null);
        message = "services.pyron.redis.urlFile is required when redis.createLocally is false, and only then";
      }
      {
        assertion = lib.all (r: lib.all (d: builtins.hasAttr d cfg.destinations) r.destinations) cfg.routes;
        message = "every services.pyron.routes.*.destinations entry must name one of services.pyron.destinations";
      }
      {
        assertion = !(cfg.sources ? default);
        message = "services.pyron.sources.default is webhookTokenFile's source; give this one another name";
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
        SocketGroup = cfg.socketGroup;
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
          ]
          ++ optional (cfg.adminTokenFile != null) "admin-token:${cfg.adminTokenFile}"
          ++ lib.mapAttrsToList (name: s: "source-${name}:${s.secretFile}") cfg.sources
          ++ credentials;
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
          LoadCredential = credentials;
        };
    };

    # Only with routes: the one unit that reaches the internet (see nix/hardening.nix).
    systemd.services.pyron-forwarder = mkIf forwarding {
      description = "Pyron delivery forwarder (pyron-forwarder)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ] ++ storeUnits;
      wants = [ "network-online.target" ] ++ storeUnits;
      environment = {
        PYRON_CONFIG = "/etc/pyron/pyron.toml";
        PYRON_FORWARDER_CONSUMER = "%H-forwarder";
      };
      restartTriggers = [ configFile ];
      serviceConfig =
        hardening "forwarder"
        // common
        // {
          ExecStart = "${cfg.package}/bin/pyron-forwarder";
          LoadCredential =
            lib.mapAttrsToList (name: d: "destination-${name}:${d.secretFile}") cfg.destinations
            ++ credentials;
        };
    };

    services.redis.servers.pyron = mkIf localRedis {
      enable = true;
      # Unix socket only; every job on disk before Redis answers (see README, Delivery).
      port = lib.mkDefault 0;
      unixSocketPerm = lib.mkDefault 660;
      appendOnly = lib.mkDefault true;
      appendFsync = lib.mkDefault "always";
      save = lib.mkDefault [ ];
      settings.maxmemory-policy = lib.mkDefault "noeviction";
    };

    services.mongodb = mkIf (cfg.database == "mongodb") {
      enable = true;
      package = lib.mkDefault pkgs.mongodb-ce;
      bind_ip = lib.mkDefault "127.0.0.1";
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
    systemd.services.pyron-tls-selfsigned = mkIf (cfg.nginx.enable && cfg.domain == null) {
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

    security.acme = mkIf (cfg.nginx.enable && cfg.domain != null) {
      acceptTerms = true;
      defaults.email = cfg.acmeEmail;
    };

    services.nginx = mkIf cfg.nginx.enable {
      enable = true;
      recommendedTlsSettings = lib.mkDefault true;
      recommendedOptimisation = lib.mkDefault true;
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
        # The same server directives as the dev and test NGINX: dev/nginx-server.conf.
        extraConfig =
          serverConfig
          + lib.optionalString (cfg.nginx.clientCertificateCA != null) ''
            ssl_verify_client optional;
            ssl_client_certificate ${cfg.nginx.clientCertificateCA};
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
    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [
      80
      443
    ];
  };
}
