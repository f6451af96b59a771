# A NixOS VM test: boots the module (FerretDB as the wire server, so no unfree package),
# posts an alert through NGINX over HTTPS and waits for its `jobs` record.
# Run with `nix build .#checks.x86_64-linux.vm -L` on a Linux machine with KVM.
{ pkgs, module }:

pkgs.testers.runNixOSTest {
  name = "pyron";

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
        database = "ferretdb";
        webhookTokenFile = "/etc/pyron-test/webhook-token";
        adminTokenFile = "/etc/pyron-test/admin-token";
      };
    };

  testScript = ''
    import json

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
        machine.wait_until_succeeds(
            "mongosh --quiet mongodb://127.0.0.1:27017/pyron --eval "
            f"'db.jobs.countDocuments({{_id: \"{event_id}\", status: \"processed\"}})' | grep -x 1",
            timeout=120,
        )
        machine.succeed(f"journalctl -u pyron-worker EVENT_ID={event_id} | grep 'alert processed'")

    with subtest("refusals are JSON, and the secret stays out of the logs"):
        machine.succeed(
            "curl -sk -o /dev/null -w '%{http_code}' -H 'Content-Type: text/plain' "
            "--data x https://localhost/webhook/wrong-token-0123 | grep -x 401"
        )
        machine.fail("grep -r vm-test-token-0123 /var/log/nginx")
        machine.fail("journalctl -u nginx -u pyron-api -u pyron-worker | grep vm-test-token-0123")

    with subtest("systemd sees both services as ready and sandboxed"):
        # The status lines refresh every two seconds.
        machine.wait_until_succeeds("systemctl show pyron-api -p StatusText | grep '1 accepted'")
        machine.wait_until_succeeds("systemctl show pyron-worker -p StatusText | grep '1 processed'")
        machine.succeed("systemctl show pyron-api -p DynamicUser | grep -x DynamicUser=yes")
  '';
}
