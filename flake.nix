{
  description = "darling-sshd: an SSH server that makes a Linux machine a Nix remote builder for x86_64-darwin through Darling";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        darling-sshd = pkgs.callPackage ./nix/package.nix { };
        default = darling-sshd;
      });

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nix/module.nix ];
        services.darling-builder.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.darling-sshd;
      };

      # The pure functions the module builds its text with.
      lib = import ./nix/lib.nix;
    };
}
