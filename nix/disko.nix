# The droplet's disk for nixos-anywhere: a BIOS boot partition for GRUB (DigitalOcean
# boots droplets in legacy BIOS mode) and one ext4 root filling the rest.
{
  disko.devices.disk.main = {
    type = "disk";
    device = "/dev/vda";
    content = {
      type = "gpt";
      partitions = {
        boot = {
          size = "1M";
          type = "EF02";
        };
        root = {
          size = "100%";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/";
          };
        };
      };
    };
  };
}
