# The droplet's NixOS configuration (nix/droplet.nix with the module) evaluated against a
# nixpkgs checkout, without the flake and its inputs: the failed assertions, the warnings,
# and the text of the systemd units Pyron runs in. scripts/eval-droplet.sh calls it; the
# package is a stand-in (evaluation builds nothing), disko's options are stubbed unless a
# disko checkout is given.
{ nixpkgs
, disko ? null
,
}:

let
  lib = import (nixpkgs + "/lib");
  diskoModule =
    if disko == null then
      {
        options.disko = lib.mkOption {
          type = lib.types.anything;
          default = { };
          description = "Stand-in for disko's options.";
        };
      }
    else
      disko + "/module.nix";
  system = import (nixpkgs + "/nixos/lib/eval-config.nix") {
    system = null;
    modules = [
      { nixpkgs.hostPlatform = "x86_64-linux"; }
      diskoModule
      ./module.nix
      ./droplet.nix
      (
        { pkgs, ... }:
        {
          services.pyron.package = pkgs.writeShellScriptBin "pyron-stand-in" "";
        }
      )
    ];
  };
  inherit (system) config;
  units = [
    "pyron-api.socket"
    "pyron-api.service"
    "pyron-worker.service"
    "redis-pyron.service"
    "mongodb.service"
    "nginx.service"
    "pyron-tls-selfsigned.service"
  ];
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  units = lib.genAttrs (lib.filter (name: config.systemd.units ? ${name}) units) (
    name: config.systemd.units.${name}.text
  );
}
