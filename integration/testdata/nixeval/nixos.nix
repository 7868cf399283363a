# The NixOS options nix/module.nix sets, other than nix.buildMachines
# (./nix-remote-build.nix), declared as nixpkgs declares them (nixos/
# modules/misc/assertions.nix, programs/darling.nix, system/activation/
# activation-script.nix, config/nix.nix, programs/ssh.nix, and
# nixos/lib/systemd-unit-options.nix for a service), with their real
# types; only the options the module uses are declared, so that a
# misspelled one fails evaluation. Declare more here, from nixpkgs, when
# the module sets more.
{ lib, pkgs, ... }:

let
  inherit (lib) mkOption types;

  # A systemd unit setting: a list (a setting given on several lines)
  # concatenated with other definitions, anything else defined once.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let defs' = lib.filterOverrides defs;
      in
      if lib.isList (lib.head defs').value
      then lib.concatMap (def:
        if lib.isList def.value then def.value
        else throw "${lib.showOption loc}: list and non-list definitions mixed") defs'
      else lib.mergeEqualOption loc defs';
  };

  # serviceConfig's check in NixOS: Type and Restart take one of systemd's
  # values.
  valueIn = name: values: cfg:
    !(cfg ? ${name}) || lib.elem cfg.${name} values;
  checkService = cfg:
    valueIn "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ] cfg
    && valueIn "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "on-watchdog" "always" ] cfg;

  service = types.submodule {
    options = {
      enable = mkOption { type = types.bool; default = true; };
      description = mkOption { type = types.singleLineStr; default = ""; };
      wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
      after = mkOption { type = types.listOf types.str; default = [ ]; };
      path = mkOption { type = with types; listOf (oneOf [ package str ]); default = [ ]; };
      environment = mkOption {
        type = with types; attrsOf (nullOr (oneOf [ str path package ]));
        default = { };
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
    };
  };

  # nix.settings: a nix.conf setting is an atom or a list of atoms.
  confAtom = with types; nullOr (oneOf [ bool int float str path package ]);

  activationScript = types.either types.str (types.submodule {
    options = {
      deps = mkOption { type = types.listOf types.str; default = [ ]; };
      text = mkOption { type = types.lines; };
      supportsDryActivation = mkOption { type = types.bool; default = false; };
    };
  });
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };

    programs.darling = {
      enable = lib.mkEnableOption "Darling, a Darwin/macOS compatibility layer for Linux";
      # mkPackageOption pkgs "darling" { }: its default, pkgs.darling,
      # throws since nixpkgs removed the package.
      package = mkOption {
        type = types.package;
        default = pkgs.darling;
      };
    };

    system.activationScripts = mkOption {
      type = types.attrsOf activationScript;
      default = { };
    };

    systemd.services = mkOption {
      type = types.attrsOf service;
      default = { };
    };

    nix.settings = mkOption {
      type = types.submodule {
        freeformType = types.attrsOf (types.either confAtom (types.listOf confAtom));
      };
      default = { };
    };

    programs.ssh.extraConfig = mkOption {
      type = types.lines;
      default = "";
    };
  };
}
