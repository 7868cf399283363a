# NixOS module: a Linux host as a Nix remote builder for x86_64-darwin,
# through darling-sshd serving a Darling prefix on 127.0.0.1.
#
# It replaces the module that ran OpenSSH inside the prefix: darling-sshd
# runs on the host, `darling-sshd init` prepares the prefix through the
# launcher (never by writing the prefix folder behind a running
# container), and the builder is registered so that the root Nix daemon
# connects with no prompt. What it generates comes from ./lib.nix.
# integration/nixeval_test.go evaluates it with nixpkgs' lib.evalModules,
# against NixOS's own declarations of the options it sets.
#
# Usage:
#   imports = [ darling-sshd.nixosModules.default ];
#   services.darling-builder = {
#     enable = true;
#     darlingPackage = <a Darling package>;  # nixpkgs removed its own in 2025
#   };
{ config, lib, pkgs, ... }:

let
  cfg = config.services.darling-builder;
  dlib = import ./lib.nix;
  alias = dlib.defaults.alias;
  stateDir = dlib.defaults.stateDir;
  # programs.darling installs the launcher as a setuid wrapper.
  darling = "/run/wrappers/bin/darling";

  # The longest prefix path Darling can use (its shellspawn socket path):
  # darlingexec.MaxPrefixLen, which init and serve check at start.
  maxPrefixLen = 83;
  # Folders the unit makes read-only (ProtectSystem=full,
  # ProtectHome=read-only), and the store: Darling could not create the
  # prefix and its prefix.workdir there.
  readOnly = [ "/usr" "/boot" "/efi" "/etc" "/home" "/root" "/run/user" "/nix/store" ];
  under = dir: p: p == dir || lib.hasPrefix "${dir}/" p;
  # A field of the machines line (and of ssh_config), as darling-sshd's
  # machines-line and ssh-config take it: one word, no list separator.
  machinesField = s: builtins.match "[^ \t\n,#\"]+" s != null;
  # What `darling-sshd init` refuses in --nix-conf: the settings it writes
  # itself, include, a name that is not a setting name, a value nix.conf
  # cannot hold on one line.
  initSets = [
    "max-jobs" "extra-max-jobs" "system-features" "extra-system-features"
    "build-users-group" "sandbox" "experimental-features" "trusted-users"
  ];
  badNixConf = lib.filter
    (k: lib.elem k initSets || k == "include"
      || builtins.match "[A-Za-z][A-Za-z0-9_-]*" k == null
      || lib.any (c: lib.hasInfix c (dlib.nixConfValue cfg.extraNixConf.${k})) [ "\n" "\r" "#" ])
    (builtins.attrNames cfg.extraNixConf);
  features = cfg.supportedFeatures ++ cfg.mandatoryFeatures;
in
{
  options.services.darling-builder = {
    enable = lib.mkEnableOption "a Darling-based x86_64-darwin remote Nix builder served by darling-sshd";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The darling-sshd package.";
    };

    darlingPackage = lib.mkOption {
      type = lib.types.package;
      description = ''
        The Darling package providing the `darling` launcher. Required:
        nixpkgs removed its darling package in 2025.
      '';
    };

    prefixStyle = lib.mkOption {
      type = lib.types.enum [ "env" "flag" ];
      default = "env";
      description = ''
        How the launcher gets the prefix: `env` (DPREFIX only, as upstream
        Darling's launcher takes it: it has no --prefix option) or `flag`
        (`darling --prefix P` plus DPREFIX, for a wrapper that wants it).
        Darling v0.1.20251023 or later is needed.
      '';
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = dlib.defaults.port;
      description = "Port darling-sshd listens on, on 127.0.0.1.";
    };

    protocol = lib.mkOption {
      type = lib.types.enum [ "ssh" "ssh-ng" ];
      default = dlib.defaults.protocol;
      description = ''
        The protocol the Nix daemon speaks to the builder: `ssh`
        (`nix-store --serve`) or `ssh-ng` (`nix-daemon --stdio`, which
        Nix 2.4 and later speak). darling-sshd serves both.
      '';
    };

    maxJobs = lib.mkOption {
      type = lib.types.ints.positive;
      default = dlib.defaults.maxJobs;
      description = "Builds the builder runs at once (nix.buildMachines and the prefix's max-jobs).";
    };

    speedFactor = lib.mkOption {
      type = lib.types.ints.positive;
      default = dlib.defaults.speedFactor;
      description = "Speed factor relative to other builders.";
    };

    shareStore = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Link the prefix's /nix to the host's store through
        /Volumes/SystemRoot/nix. Unsafe for remote builds: the host's Nix
        daemon and the prefix's Nix lock the same output paths and can
        deadlock (nix-darwin's linux-builder keeps a separate store for this
        reason). Off by default.
      '';
    };

    sshKeyPath = lib.mkOption {
      type = lib.types.str;
      default = dlib.defaults.identity;
      description = ''
        The Nix daemon's builder key (ed25519), generated on activation if
        missing; its .pub is the server's authorized key.
      '';
    };

    prefixPath = lib.mkOption {
      type = lib.types.str;
      default = dlib.defaults.prefix;
      description = ''
        The Darling prefix. Darling creates it (a prefix folder that exists
        is taken as set up), inside the service's state directory
        /var/lib/darling-builder; its sibling prefix.workdir must be
        writable too. At most 83 bytes (Darling's socket path).
      '';
    };

    supportedFeatures = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "System features the builder supports.";
    };

    mandatoryFeatures = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "System features a derivation must require to be built here.";
    };

    publicHostKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = ''
        The server's host key for nix.buildMachines, base64 as
        `darling-sshd hostkey --format base64` prints it. Optional: the
        root Nix daemon's ssh already trusts the key through the known hosts
        file darling-sshd writes.
      '';
    };

    extraNixConf = lib.mkOption {
      type = with lib.types; attrsOf (oneOf [ str int bool (listOf str) ]);
      default = { };
      example = lib.literalExpression ''
        {
          extra-substituters = [ "https://cache.example.org" ];
          extra-trusted-public-keys = [ "cache.example.org-1:…" ];
          min-free = 2147483648;
        }
      '';
      description = ''
        More settings for the prefix's nix.conf, passed to
        `darling-sshd init` as `--nix-conf KEY=VALUE` and written after
        init's own, in name order; a list's items are separated by spaces.
        `min-free` and `max-free` replace init's defaults. Settings init
        writes itself are refused at start (`max-jobs` and
        `system-features` come from `maxJobs` and the features options;
        add to `experimental-features` or `trusted-users` with their
        `extra-` forms). A Darling prefix's Nix is x86_64-darwin, so
        `extra-platforms` is not needed.
      '';
    };

    installNix = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Install Nix inside the prefix at start if it is missing: the
        single-user steps of Nix's installer for `nixVersion`, done by hand
        (the installer refuses a single-user install on macOS, which Darling
        reports itself as). Needs network access at service start.
      '';
    };

    nixVersion = lib.mkOption {
      type = lib.types.str;
      default = dlib.defaults.nixVersion;
      description = "Nix version to install when `installNix` is set.";
    };
  };

  config = lib.mkIf cfg.enable {
    # What init and serve would refuse at start, or what would break the
    # machines line, refused when the system is built.
    assertions = [
      {
        assertion = lib.hasPrefix "/" cfg.prefixPath && builtins.stringLength cfg.prefixPath <= maxPrefixLen;
        message = "services.darling-builder.prefixPath: ${cfg.prefixPath}: want an absolute path of at most ${toString maxPrefixLen} bytes (Darling's socket path)";
      }
      {
        assertion = !lib.any (d: under d cfg.prefixPath) readOnly;
        message = "services.darling-builder.prefixPath: ${cfg.prefixPath} is in a folder the service cannot write (${lib.concatStringsSep ", " readOnly}); use /var/lib/darling-builder";
      }
      {
        assertion = lib.hasPrefix "/" cfg.sshKeyPath && machinesField cfg.sshKeyPath;
        message = "services.darling-builder.sshKeyPath: ${cfg.sshKeyPath}: want an absolute path without spaces, commas, quotes or #";
      }
      {
        assertion = lib.all machinesField features;
        message = "services.darling-builder: system features ${lib.concatStringsSep ", " features}: want names without spaces, commas, quotes or #";
      }
      {
        assertion = badNixConf == [ ];
        message = "services.darling-builder.extraNixConf: darling-sshd init refuses ${lib.concatStringsSep ", " badNixConf}: "
          + "max-jobs and system-features come from maxJobs and the features options, experimental-features and trusted-users take their extra- forms, "
          + "a value cannot hold a line break or #";
      }
    ];

    programs.darling.enable = true;
    programs.darling.package = cfg.darlingPackage;

    system.activationScripts.darling-builder-keys = lib.stringAfter [ "users" ] ''
      if [ ! -f "${cfg.sshKeyPath}" ]; then
        mkdir -p "$(dirname "${cfg.sshKeyPath}")"
        ${pkgs.openssh}/bin/ssh-keygen -q -t ed25519 -N "" -f "${cfg.sshKeyPath}" -C "darling-builder@$(hostname)"
        chmod 600 "${cfg.sshKeyPath}"
        chmod 644 "${cfg.sshKeyPath}.pub"
      fi
    '';

    systemd.services.darling-sshd = {
      description = "darling-sshd: x86_64-darwin Nix remote builder through Darling";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      path = [ pkgs.coreutils ];
      environment = {
        DPREFIX = cfg.prefixPath;
        HOME = "/root";
      };
      serviceConfig = {
        Type = "notify";
        ExecStartPre =
          lib.optional cfg.installNix "${pkgs.writeShellScript "darling-builder-install-nix" ''
            set -euo pipefail
            if ${darling} shell test -x /nix/var/nix/profiles/default/bin/nix-store; then exit 0; fi
            ${darling} shell /bin/sh -c ${lib.escapeShellArg (dlib.installNixScript { version = cfg.nixVersion; })}
          ''}"
          ++ [
            (dlib.initCommand {
              package = cfg.package;
              prefix = cfg.prefixPath;
              inherit darling;
              inherit (cfg) prefixStyle maxJobs shareStore extraNixConf;
              systemFeatures = lib.unique (cfg.supportedFeatures ++ cfg.mandatoryFeatures);
            })
          ];
        ExecStart = dlib.execStart {
          package = cfg.package;
          prefix = cfg.prefixPath;
          inherit darling stateDir alias;
          inherit (cfg) prefixStyle port;
          authorizedKeys = "${cfg.sshKeyPath}.pub";
        };
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        ExecStopPost = "-${darling} shutdown";
        KillMode = "mixed";
        # Longer than --shutdown-grace (30s) plus --kill-grace (5s).
        TimeoutStopSec = "45s";
        Restart = "on-failure";
        RestartSec = "5s";
        StateDirectory = [ "darling-sshd" "darling-builder" ];
        StateDirectoryMode = "0700";
        # Darling is a setuid wrapper and makes namespaces and mounts.
        NoNewPrivileges = false;
        ProtectSystem = "full";
        ProtectHome = "read-only";
        ProtectKernelModules = true;
        RestrictRealtime = true;
        # Each session gets a cgroup of its own below the service's, so
        # that nothing a session starts outlives it: the service manages
        # its cgroup subtree, which must stay writable.
        Delegate = true;
      };
    };

    nix.distributedBuilds = true;
    nix.settings.builders-use-substitutes = true;
    nix.buildMachines = [
      ({
        hostName = alias;
        inherit (cfg) protocol;
        systems = [ "x86_64-darwin" ];
        sshUser = "root";
        sshKey = cfg.sshKeyPath;
        inherit (cfg) maxJobs speedFactor supportedFeatures mandatoryFeatures;
      } // lib.optionalAttrs (cfg.publicHostKey != null) { inherit (cfg) publicHostKey; })
    ];

    # The port and the host key go through ssh_config: nix.buildMachines has
    # no port option, and no Nix version needs a port in the URI this way.
    programs.ssh.extraConfig = dlib.sshConfig {
      inherit alias;
      inherit (cfg) port;
      identity = cfg.sshKeyPath;
      knownHosts = dlib.knownHostsFile stateDir;
    };
  };
}
