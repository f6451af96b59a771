# NixOS VM tests of the module: boot it, post an alert through NGINX over HTTPS and wait
# for its `jobs` record.
#
# `database = "mongodb"` (the production default, `pkgs.mongodb-ce`) is the full test:
# it also checks the refusals, that the secret stays out of the logs, how systemd sees
# the services, and a route: an alert of a second source delivered by pyron-forwarder,
# signed, to a small HTTP server on the machine. `pkgs` must allow the unfree mongodb-ce (the flake passes a nixpkgs that
# does: the test's nodes share it read-only, so they cannot allow it themselves).
# `database = "ferretdb"` is the smaller test of that choice.
#
# Run with `nix build .#checks.x86_64-linux.vm -L` (or `.vm-ferretdb`) on Linux with KVM.
{ pkgs
, module
, database ? "mongodb"
,
}:

assert builtins.elem database [
  "mongodb"
  "ferretdb"
];

let
  full = database == "mongodb";
  # The route's destination: answers 200 to every POST and notes what it got.
  sink = pkgs.writeText "sink.py" ''
    import http.server, json

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            note = {"path": self.path, "id": self.headers.get("webhook-id"),
                    "signature": self.headers.get("webhook-signature"), "body": body.decode()}
            with open("/var/lib/sink/received", "a") as f:
                f.write(json.dumps(note) + "\n")
            self.send_response(200)
            self.end_headers()

    http.server.HTTPServer(("127.0.0.1", 9099), Sink).serve_forever()
  '';
in
pkgs.testers.runNixOSTest {
  name = "pyron-${database}";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ module ];
      virtualisation.memorySize = 2048;
      environment.etc."pyron-test/webhook-token".text = "vm-test-token-0123";
      environment.etc."pyron-test/admin-token".text = "vm-test-admin-token-0123";
      environment.systemPackages = [
        pkgs.curl
        pkgs.mongosh
      ];
      services.pyron = {
        enable = true;
        inherit database;
        webhookTokenFile = "/etc/pyron-test/webhook-token";
        adminTokenFile = "/etc/pyron-test/admin-token";
        # Each alert's own line too, which the journal check below looks for.
        settings.log = "info,pyron::alerts=debug";
      }
      // pkgs.lib.optionalAttrs full {
        sources.tradingview.secretFile = "/etc/pyron-test/tradingview";
        destinations.sink = {
          kind = "http";
          url = "http://127.0.0.1:9099/orders";
          secretFile = "/etc/pyron-test/sink-signing";
        };
        routes = [
          {
            name = "orders";
            sources = [ "tradingview" ];
            destinations = [ "sink" ];
          }
        ];
      };
      environment.etc."pyron-test/tradingview".text = "vm-test-tradingview-0123";
      environment.etc."pyron-test/sink-signing".text = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
      systemd.services.sink = pkgs.lib.mkIf full {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          ExecStart = "${pkgs.python3}/bin/python3 ${sink}";
          StateDirectory = "sink";
        };
      };
    };

  testScript = ''
    import json


    def wait_for_job(event_id, condition='status: "processed"', timeout=120):
        """Waits until the alert's jobs record matches `condition` (mongosh syntax)."""
        machine.wait_until_succeeds(
            "mongosh --quiet mongodb://127.0.0.1:27017/pyron --eval "
            f"'db.jobs.countDocuments({{_id: \"{event_id}\", {condition}}})' | grep -x 1",
            timeout=timeout,
        )

    machine.wait_for_unit("${if database == "mongodb" then "mongodb" else "ferretdb"}.service")
    machine.wait_for_unit("nginx.service")
    machine.wait_for_unit("pyron-api.service")
    machine.wait_for_unit("pyron-worker.service")
    machine.wait_for_open_port(443)

    with subtest("HTTP redirects to HTTPS"):
        machine.succeed(
            "curl -s -o /dev/null -w '%{http_code}' http://localhost/webhook | grep -x 301"
        )

    with subtest("an alert posted over HTTPS ends with its jobs record"):
        ack = json.loads(machine.succeed(
            "curl -sSk -H 'Content-Type: application/json' "
            "--data '{\"ticker\":\"BTCUSDT\",\"action\":\"buy\",\"price\":67000.5}' "
            "https://localhost/webhook/vm-test-token-0123"
        ))
        assert ack["status"] == "queued", ack
        event_id = ack["id"]
        wait_for_job(event_id)
        machine.succeed(f"journalctl -u pyron-worker EVENT_ID={event_id} | grep 'alert processed'")
  '' + pkgs.lib.optionalString full ''

    with subtest("JSON sent as text/plain is read by its passphrase"):
        ack = json.loads(machine.succeed(
            "curl -sSk -H 'Content-Type: text/plain; charset=utf-8' "
            "--data-binary $'{\"passphrase\":\"vm-test-token-0123\",\"ticker\":\"ETHUSDT\",\"action\":\"sell\"}\\n' "
            "https://localhost/webhook"
        ))
        assert ack["status"] == "queued", ack
        wait_for_job(ack["id"], '"signal.ticker": "ETHUSDT"', timeout=60)

    with subtest("refusals are JSON, and the secret stays out of the logs"):
        machine.succeed(
            "curl -sk -o /dev/null -w '%{http_code}' -H 'Content-Type: text/plain' "
            "--data x https://localhost/webhook/wrong-token-0123 | grep -x 401"
        )
        machine.fail("grep -r vm-test-token-0123 /var/log/nginx")
        machine.fail("journalctl -u nginx -u pyron-api -u pyron-worker | grep vm-test-token-0123")

    with subtest("systemd sees both services as ready and sandboxed"):
        # The status lines refresh every two seconds.
        machine.wait_until_succeeds("systemctl show pyron-api -p StatusText | grep '2 accepted'")
        machine.wait_until_succeeds("systemctl show pyron-worker -p StatusText | grep '2 processed'")
        machine.succeed("systemctl show pyron-api -p DynamicUser | grep -x DynamicUser=yes")

    with subtest("a route: pyron-forwarder delivers the source's alert, signed"):
        machine.wait_for_unit("pyron-forwarder.service")
        machine.wait_for_unit("sink.service")
        ack = json.loads(machine.succeed(
            "curl -sSk -H 'Content-Type: application/json' "
            "--data '{\"passphrase\":\"vm-test-tradingview-0123\",\"ticker\":\"SOLUSDT\",\"action\":\"buy\"}' "
            "https://localhost/webhook"
        ))
        assert ack["status"] == "queued", ack
        machine.wait_until_succeeds(
            "mongosh --quiet mongodb://127.0.0.1:27017/pyron --eval "
            f"'db.deliveries.countDocuments({{event: \"{ack['id']}\", status: \"delivered\"}})' | grep -x 1",
            timeout=60,
        )
        received = json.loads(machine.succeed("tail -n 1 /var/lib/sink/received"))
        assert received["id"] == f"{ack['id']}:orders:sink", received
        assert received["signature"].startswith("v1,"), received
        assert json.loads(received["body"])["source"] == "tradingview", received
        machine.succeed("systemctl show pyron-forwarder -p DynamicUser | grep -x DynamicUser=yes")
        machine.fail("journalctl -u pyron-forwarder | grep -e vm-test-tradingview-0123 -e MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")

    with subtest("pyron-api restarted while MongoDB is down still takes alerts"):
        # Masked, or pyron-api's Wants= would start it again with pyron-api.
        machine.succeed("systemctl mask --runtime mongodb.service")
        machine.systemctl("stop mongodb.service")
        machine.systemctl("restart pyron-api.service")
        machine.wait_for_unit("pyron-api.service")
        ack = json.loads(machine.succeed(
            "curl -sSk -m 3 -H 'Content-Type: text/plain' --data 'during the outage' "
            "https://localhost/webhook/vm-test-token-0123"
        ))
        assert ack["status"] == "queued", ack
        machine.succeed("systemctl unmask --runtime mongodb.service")
        machine.systemctl("start mongodb.service")
        wait_for_job(ack["id"])
  '';
}
