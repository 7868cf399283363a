# Pure functions (builtins only) that build what the NixOS module
# generates: the serve command line, the machines line, the ssh_config
# block and the prefix's nix.conf. They produce exactly the text of
# `darling-sshd machines-line`, `ssh-config` and `init`; a golden test in
# integration/ checks them offline with nix-instantiate --eval --strict.
rec {
  defaults = {
    alias = "darling-builder";
    user = "root";
    protocol = "ssh";
    systems = [ "x86_64-darwin" ];
    identity = "/etc/nix/darling-builder-key";
    maxJobs = 4;
    speedFactor = 1;
    host = "127.0.0.1";
    port = 2222;
    stateDir = "/var/lib/darling-sshd";
    prefix = "/var/lib/darling-builder/prefix";
    nixVersion = "2.24.12";
  };

  knownHostsFile = stateDir: "${stateDir}/known_hosts";
  hostKeyFile = stateDir: "${stateDir}/ssh_host_ed25519_key";

  # Client cipher order: AES-GCM first (x/crypto's chacha20-poly1305 has
  # no amd64 assembly and the client's order decides).
  ciphers = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com";

  listOrDash = l: if l == [ ] then "-" else builtins.concatStringsSep "," l;

  # One line of /etc/nix/machines (or --builders).
  machinesLine =
    { alias ? defaults.alias, protocol ? defaults.protocol, user ? defaults.user
    , systems ? defaults.systems, identity ? defaults.identity, maxJobs ? defaults.maxJobs
    , speedFactor ? defaults.speedFactor, supportedFeatures ? [ ], mandatoryFeatures ? [ ]
    , publicHostKey ? null }:
    builtins.concatStringsSep " " [
      "${protocol}://${user}@${alias}"
      (listOrDash systems)
      identity
      (toString maxJobs)
      (toString speedFactor)
      (listOrDash supportedFeatures)
      (listOrDash mandatoryFeatures)
      (if publicHostKey == null then "-" else publicHostKey)
    ];

  # The ssh_config Host block that goes with machinesLine: no Nix version
  # needs a port in the URI then.
  sshConfig =
    { alias ? defaults.alias, host ? defaults.host, port ? defaults.port, user ? defaults.user
    , identity ? defaults.identity, knownHosts ? knownHostsFile defaults.stateDir }:
    builtins.concatStringsSep "\n" [
      "Host ${alias}"
      "  HostName ${host}"
      "  Port ${toString port}"
      "  User ${user}"
      "  IdentityFile ${identity}"
      "  IdentitiesOnly yes"
      "  HostKeyAlias ${alias}"
      "  UserKnownHostsFile ${knownHosts}"
      "  Ciphers ${ciphers}"
      ""
    ];

  # A value of the module's extraNixConf as nix.conf writes it: a list's
  # items separated by spaces, booleans as true/false; spaces and tabs
  # around it dropped, as init drops them.
  nixConfValue = v:
    if builtins.isList v then builtins.concatStringsSep " " (map nixConfValue v)
    else if builtins.isBool v then (if v then "true" else "false")
    else
      let m = builtins.match "[ \t]*(.*[^ \t])[ \t]*" (toString v);
      in if m == null then "" else builtins.head m;

  # extraNixConf as init's --nix-conf values, in name order (the order
  # of builtins.attrNames), which is the order init writes them in.
  nixConfSettings = extraNixConf:
    map (k: "${k}=${nixConfValue extraNixConf.${k}}") (builtins.attrNames extraNixConf);

  # The prefix's nix.conf as `darling-sshd init` writes it, managed header
  # included: init's own settings, then extraNixConf's (--nix-conf), whose
  # min-free or max-free replace init's defaults.
  nixConf = { maxJobs ? defaults.maxJobs, systemFeatures ? [ ], extraNixConf ? { } }:
    let
      line = k: v: if v == "" then "${k} =\n" else "${k} = ${v}\n";
      body = builtins.concatStringsSep "" ([
        "build-users-group =\n"
        "sandbox = false\n"
        "experimental-features = nix-command flakes\n"
        "trusted-users = root\n"
        "max-jobs = ${toString maxJobs}\n"
      ] ++ (if systemFeatures == [ ] then [ ] else [
        "system-features = ${builtins.concatStringsSep " " systemFeatures}\n"
      ]) ++ (if extraNixConf ? min-free then [ ] else [ "min-free = 1073741824\n" ])
        ++ (if extraNixConf ? max-free then [ ] else [ "max-free = 4294967296\n" ])
        ++ map (k: line k (nixConfValue extraNixConf.${k})) (builtins.attrNames extraNixConf));
    in
    "# Written by darling-sshd init from its flags (--nix-conf KEY=VALUE for other settings); init refuses to overwrite a hand edit without --force.\n"
    + "# darling-sshd-managed sha256=${builtins.hashString "sha256" body}\n"
    + body;

  # One argument of a systemd Exec line: '%' and '$' doubled (systemd
  # expands specifiers and variables even in quotes), and unless it holds
  # only plain characters, in double quotes with backslashes and double
  # quotes escaped (systemd reads C escapes).
  systemdArg = a:
    let s = builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] a;
    in if builtins.match "[A-Za-z0-9_./:=,@+-]+" s != null then s
    else "\"" + builtins.replaceStrings [ "\\" "\"" ] [ "\\\\" "\\\"" ] s + "\"";

  # The script that installs Nix in the prefix, run there as root with
  # `darling shell /bin/sh -c`: the single-user steps of Nix's installer,
  # done by hand. The installer itself cannot do them: since Nix 2.4 it
  # refuses --no-daemon on macOS, which Darling reports itself as, and its
  # multi-user install needs dscl, launchctl and an APFS volume, which
  # Darling lacks. Store paths are copied as the installer copies them
  # (through a .tmp, read-only); Nix goes into the default profile, which
  # is on every session's PATH, with the CA bundle Nix looks for there.
  installNixScript =
    { version ? defaults.nixVersion
    , url ? "https://releases.nixos.org/nix/nix-${version}/nix-${version}-x86_64-darwin.tar.xz" }:
    let dir = "nix-${version}-x86_64-darwin"; in ''
      set -e
      cd /private/tmp
      rm -rf ${dir}
      curl -fsSL ${url} | tar -xJf -
      eval "$(grep -E '^(nix|cacert)=' ${dir}/install)"
      mkdir -p /nix/store /nix/var/nix
      for p in ${dir}/store/*; do
        q=/nix/store/''${p##*/}
        [ ! -e "$q" ] || continue
        if [ -e "$q.tmp" ]; then chmod -R u+w "$q.tmp"; rm -rf "$q.tmp"; fi
        cp -RPp "$p" "$q.tmp"
        chmod -R a-w "$q.tmp"
        chmod u+w "$q.tmp"
        mv "$q.tmp" "$q"
        chmod a-w "$q"
      done
      "$nix/bin/nix-store" --load-db < ${dir}/.reginfo
      "$nix/bin/nix-env" -p /nix/var/nix/profiles/default -i "$nix" "$cacert"
      chmod -R u+w ${dir}
      rm -rf ${dir}
    '';

  # Arguments shared by init and serve to reach the prefix.
  launcherArgs = { prefix ? defaults.prefix, darling, prefixStyle ? "env" }:
    [ "--prefix" prefix "--darling" darling "--prefix-style" prefixStyle ];

  # ExecStartPre: prepare the prefix. extraNixConf's values may hold
  # spaces (lists): each argument is quoted for systemd as needed.
  initCommand =
    { package, prefix ? defaults.prefix, darling, prefixStyle ? "env", maxJobs ? defaults.maxJobs
    , systemFeatures ? [ ], shareStore ? false, extraNixConf ? { } }:
    builtins.concatStringsSep " " (map systemdArg ([ "${package}/bin/darling-sshd" "init" ]
      ++ launcherArgs { inherit prefix darling prefixStyle; }
      ++ [ "--max-jobs" (toString maxJobs) ]
      ++ (if systemFeatures == [ ] then [ ] else [ "--system-features" (builtins.concatStringsSep "," systemFeatures) ])
      ++ (if shareStore then [ "--share-store" ] else [ ])
      ++ builtins.concatMap (s: [ "--nix-conf" s ]) (nixConfSettings extraNixConf)));

  # ExecStart: serve on loopback. Each argument is quoted for systemd as
  # needed, as in initCommand: a prefix path may hold a space.
  execStart =
    { package, prefix ? defaults.prefix, darling, prefixStyle ? "env", port ? defaults.port
    , stateDir ? defaults.stateDir, authorizedKeys ? "${defaults.identity}.pub", alias ? defaults.alias }:
    builtins.concatStringsSep " " (map systemdArg ([ "${package}/bin/darling-sshd" "serve" "--listen" "127.0.0.1:${toString port}" ]
      ++ launcherArgs { inherit prefix darling prefixStyle; }
      ++ [
        "--host-key" (hostKeyFile stateDir)
        "--authorized-keys" authorizedKeys
        "--known-hosts-out" (knownHostsFile stateDir)
        "--host-alias" alias
      ]));
}
