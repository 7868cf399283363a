# nix.buildMachines and nix.distributedBuilds as NixOS declares them in
# nixpkgs' nixos/modules/config/nix-remote-build.nix (NixOS/nixpkgs,
# MIT): the same field names, types and defaults, so that a field it does
# not have, or a value of the wrong type, fails evaluation as it fails on
# NixOS. Descriptions shortened. Its config part is the assertion that
# every machine names a system; the /etc/nix/machines text it writes is
# rendered by the Go test (nixosMachinesLine), in the same format.
{ config, lib, ... }:

let
  inherit (lib) mkOption types;
in
{
  options.nix = {
    buildMachines = mkOption {
      type = types.listOf (types.submodule {
        options = {
          hostName = mkOption {
            type = types.str;
            description = "The hostname of the build machine.";
          };
          protocol = mkOption {
            type = types.enum [ null "ssh" "ssh-ng" ];
            default = "ssh";
            description = "The protocol used for communicating with the build machine.";
          };
          system = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "The system type the build machine can execute derivations on.";
          };
          systems = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "The system types the build machine can execute derivations on.";
          };
          sshUser = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "The username to log in as on the remote host.";
          };
          sshKey = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "The path to the SSH private key with which to authenticate.";
          };
          maxJobs = mkOption {
            type = types.int;
            default = 1;
            description = "The number of concurrent jobs the build machine supports.";
          };
          speedFactor = mkOption {
            type = types.numbers.positive;
            default = 1;
            description = "The relative speed of this builder.";
          };
          mandatoryFeatures = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "Features mandatory for this builder (also supported).";
          };
          supportedFeatures = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "Features supported by this builder.";
          };
          publicHostKey = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "The (base64-encoded) public host key of this builder.";
          };
        };
      });
      default = [ ];
      description = "The machines to be used if distributed builds are enabled.";
    };

    distributedBuilds = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to distribute builds to the machines in nix.buildMachines.";
    };
  };

  config.assertions =
    let
      noSystem = m: m.system == null && m.systems == [ ];
    in
    [
      {
        assertion = !(lib.any noSystem config.nix.buildMachines);
        message = "nix.buildMachines: a machine names no system (system or systems): "
          + lib.concatMapStringsSep ", " (m: m.hostName) (lib.filter noSystem config.nix.buildMachines);
      }
    ];
}
