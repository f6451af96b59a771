{
  description = "Pyron: a self-hosted webhook receiver for trading alerts";

  inputs = {
    nixpkgs.url = "https://channels.nixos.org/nixos-26.05-small/nixexprs.tar.zst";
    crane.url = "github:ipetkov/crane";
    disko = {
      url = "github:nix-community/disko";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    { self
    , nixpkgs
    , crane
    , disko
    ,
    }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      build = import ./nix/package.nix {
        inherit pkgs;
        craneLib = crane.mkLib pkgs;
      };
      # Terraform is under the BUSL, unfree to nixpkgs: allowed for the shell alone.
      shellPkgs = import nixpkgs {
        inherit system;
        config.allowUnfreePredicate = pkg: nixpkgs.lib.getName pkg == "terraform";
      };
      # MongoDB's server (SSPL) likewise, for the VM test of the production default.
      testPkgs = import nixpkgs {
        inherit system;
        config.allowUnfreePredicate = pkg: nixpkgs.lib.getName pkg == "mongodb-ce";
      };
      vmTest =
        database: testPkgs':
        import ./nix/vm-test.nix {
          inherit database;
          pkgs = testPkgs';
          module = self.nixosModules.default;
        };
    in
    {
      packages.${system} = {
        pyron = build.package;
        default = build.package;
      };

      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.pyron.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.pyron;
        };

      nixosConfigurations.droplet = nixpkgs.lib.nixosSystem {
        modules = [
          { nixpkgs.hostPlatform = system; }
          disko.nixosModules.disko
          self.nixosModules.default
          ./nix/droplet.nix
        ];
      };

      checks.${system} =
        {
          pyron = build.package;
          clippy = build.clippy;
          vm = vmTest "mongodb" testPkgs;
        }
        # Only FerretDB 1.x has the SQLite backend the `ferretdb` choice uses.
        // nixpkgs.lib.optionalAttrs (nixpkgs.lib.versionOlder pkgs.ferretdb.version "2") {
          vm-ferretdb = vmTest "ferretdb" pkgs;
        };

      devShells.${system}.default = import ./nix/shell.nix { pkgs = shellPkgs; };

      formatter.${system} = pkgs.nixpkgs-fmt;
    };
}
