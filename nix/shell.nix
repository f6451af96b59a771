# The development shell: the Rust toolchain, the servers the tests start, and the tools
# the checks and the deployment use.
{ pkgs }:

pkgs.mkShell {
  packages = [
    pkgs.cargo
    pkgs.rustc
    pkgs.clippy
    pkgs.rustfmt
    pkgs.cargo-nextest
    pkgs.go
    pkgs.redis
    pkgs.ferretdb
    pkgs.mongosh
    pkgs.nginx
    pkgs.openssl
    pkgs.curl
    pkgs.oha
    pkgs.k6
    pkgs.terraform
    pkgs.actionlint
    pkgs.nixpkgs-fmt
    pkgs.deadnix
  ];
}
