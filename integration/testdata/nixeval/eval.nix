# nix/module.nix evaluated by nixpkgs' own module system (lib.evalModules
# from <nixpkgs/lib>), with the NixOS options it sets declared in
# ./nixos.nix and ./nix-remote-build.nix and the packages it uses from
# ./pkgs.nix; what it produces, as integration/nixeval_test.go reads it.
# settings are services.darling-builder's, over enable = true and a
# stand-in darlingPackage; module is the module file (a copy in a test).
{ settings ? { }, module ? ../../../nix/module.nix, inlineScripts ? false }:

let
  lib = import <nixpkgs/lib>;
  pkgs = import ./pkgs.nix { inherit inlineScripts; };
  config = (lib.evalModules {
    modules = [
      module
      ./nixos.nix
      ./nix-remote-build.nix
      { _module.args.pkgs = pkgs; }
      { services.darling-builder = { enable = true; darlingPackage = pkgs.darling-test; } // settings; }
    ];
  }).config;
  svc = config.systemd.services.darling-sshd or null;
  cfg = config.services.darling-builder;
in
{
  package = toString cfg.package;
  darlingPackage = toString cfg.darlingPackage;
  assertions = map (a: { inherit (a) assertion message; }) config.assertions;
  service =
    if svc == null then null
    else {
      inherit (svc) enable description wantedBy after environment serviceConfig;
      path = map toString svc.path;
    };
  darling = {
    inherit (config.programs.darling) enable;
    package = if config.programs.darling.enable then toString config.programs.darling.package else null;
  };
  activationScripts = lib.mapAttrs
    (_: s: if lib.isString s then { deps = [ ]; text = s; } else { inherit (s) deps text; })
    config.system.activationScripts;
  buildMachines = config.nix.buildMachines;
  distributedBuilds = config.nix.distributedBuilds;
  nixSettings = config.nix.settings;
  sshExtraConfig = config.programs.ssh.extraConfig;
}
