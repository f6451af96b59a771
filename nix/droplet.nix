# The DigitalOcean droplet that terraform/ provisions and nixos-anywhere installs
# (`.#nixosConfigurations.droplet`): nixpkgs' DigitalOcean configuration, the disk layout
# in disko.nix, and Pyron. Edit the `services.pyron` block for your deployment.
{ lib, modulesPath, ... }:

{
  imports = [
    (modulesPath + "/virtualisation/digital-ocean-config.nix")
    ./disko.nix
  ];

  # DigitalOcean hands out addresses through its metadata service, which cloud-init
  # reads; the droplet's own hostname and root SSH keys come from there too. cloud-init
  # writes systemd-networkd's configuration, so NixOS uses networkd as well (as nixpkgs'
  # Azure image does with the same cloud-init settings).
  networking.useDHCP = lib.mkForce false;
  networking.useNetworkd = true;
  # The droplet's user data is cloud-init's; never a NixOS configuration to switch to
  # (this system comes from the flake).
  virtualisation.digitalOcean.rebuildFromUserData = false;
  services.cloud-init = {
    enable = true;
    network.enable = true;
    settings = {
      datasource_list = [ "DigitalOcean" ];
      datasource.DigitalOcean = { };
    };
  };
  # digital-ocean-config and disko both name the boot disk; once is enough.
  boot.loader.grub.devices = lib.mkForce [ "/dev/vda" ];

  services.pyron = {
    enable = true;
    # domain = "alerts.example.com";
    # acmeEmail = "you@example.com";
    # Written by the deploy workflow before the first switch (README, Deploy on
    # DigitalOcean); never in the Nix store.
    webhookTokenFile = "/var/lib/pyron-secrets/webhook-token";
    adminTokenFile = "/var/lib/pyron-secrets/admin-token";
    database = "mongodb";
  };
  nixpkgs.config.allowUnfreePredicate =
    pkg:
    builtins.elem (lib.getName pkg) [
      "mongodb-ce"
    ];

  nix.settings.experimental-features = [
    "nix-command"
    "flakes"
  ];
  system.stateVersion = "26.05";
}
