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

  # The prefix's nix.conf as `darling-sshd init` writes it, managed header
  # included.
  nixConf = { maxJobs ? defaults.maxJobs, systemFeatures ? [ ] }:
    let
      body = builtins.concatStringsSep "" ([
        "build-users-group =\n"
        "sandbox = false\n"
        "experimental-features = nix-command flakes\n"
        "trusted-users = root\n"
        "max-jobs = ${toString maxJobs}\n"
      ] ++ (if systemFeatures == [ ] then [ ] else [
        "system-features = ${builtins.concatStringsSep " " systemFeatures}\n"
      ]) ++ [
        "min-free = 1073741824\n"
        "max-free = 4294967296\n"
      ]);
    in
    "# Written by darling-sshd init; edit it there, or your edit is kept only until init --force.\n"
    + "# darling-sshd-managed sha256=${builtins.hashString "sha256" body}\n"
    + body;

  # Arguments shared by init and serve to reach the prefix.
  launcherArgs = { prefix ? defaults.prefix, darling, prefixStyle ? "env" }:
    [ "--prefix" prefix "--darling" darling "--prefix-style" prefixStyle ];

  # ExecStartPre: prepare the prefix.
  initCommand =
    { package, prefix ? defaults.prefix, darling, prefixStyle ? "env", maxJobs ? defaults.maxJobs
    , systemFeatures ? [ ], shareStore ? false }:
    builtins.concatStringsSep " " ([ "${package}/bin/darling-sshd" "init" ]
      ++ launcherArgs { inherit prefix darling prefixStyle; }
      ++ [ "--max-jobs" (toString maxJobs) ]
      ++ (if systemFeatures == [ ] then [ ] else [ "--system-features" (builtins.concatStringsSep "," systemFeatures) ])
      ++ (if shareStore then [ "--share-store" ] else [ ]));

  # ExecStart: serve on loopback.
  execStart =
    { package, prefix ? defaults.prefix, darling, prefixStyle ? "env", port ? defaults.port
    , stateDir ? defaults.stateDir, authorizedKeys ? "${defaults.identity}.pub", alias ? defaults.alias }:
    builtins.concatStringsSep " " ([ "${package}/bin/darling-sshd" "serve" "--listen" "127.0.0.1:${toString port}" ]
      ++ launcherArgs { inherit prefix darling prefixStyle; }
      ++ [
        "--host-key" (hostKeyFile stateDir)
        "--authorized-keys" authorizedKeys
        "--known-hosts-out" (knownHostsFile stateDir)
        "--host-alias" alias
      ]);
}
