# The pyron package (its three binaries) and its clippy check, built with crane from
# Cargo.lock: dependencies are built once into their own derivation and reused.
{ pkgs, craneLib }:

let
  inherit (pkgs) lib;
  src = craneLib.cleanCargoSource ../.;
  commonArgs = {
    inherit src;
    strictDeps = true;
  };
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;
in
{
  package = craneLib.buildPackage (
    commonArgs
    // {
      inherit cargoArtifacts;
      # The integration tests need Redis, a MongoDB wire server and NGINX running; CI
      # runs them (scripts/test.sh). The unit tests run here.
      cargoTestExtraArgs = "--lib --bins";
      meta = {
        description = "Self-hosted webhook receiver for trading alerts";
        license = lib.licenses.mit;
        mainProgram = "pyron-api";
        platforms = lib.platforms.linux;
      };
    }
  );

  clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    }
  );
}
