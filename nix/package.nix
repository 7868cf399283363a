# darling-sshd, built with Go 1.26 (golang.org/x/crypto needs it).
#
# vendorHash was computed offline from `go mod vendor` with `nix hash path`
# (see the README); nixpkgs has not built this yet, so a mismatch shows as a
# hash error naming the right value.
{ lib, buildGoModule, go_1_26 }:

(buildGoModule.override { go = go_1_26; }) {
  pname = "darling-sshd";
  version = "0.1.0";
  src = lib.cleanSource ./..;
  vendorHash = "sha256-1fi1Szaq0x/CE1BeoqjdtJGzAWgn/qAfux5BHuzUn9o=";
  subPackages = [ "cmd/darling-sshd" ];
  # The tests need root, namespaces, OpenSSH and Nix: they run in `make test`.
  doCheck = false;
  meta = {
    description = "SSH server that makes a Linux machine a Nix remote builder for x86_64-darwin through Darling";
    mainProgram = "darling-sshd";
    platforms = lib.platforms.linux;
  };
}
