# pkgs for evaluating nix/module.nix without nixpkgs' packages: each
# package is derivation-shaped (lib.isDerivation holds) at a made-up store
# path; nothing is built. With inlineScripts, writeShellScript's "path" is
# the script itself, so that a test can read what it would write.
{ inlineScripts ? false }:

let
  storePath = name: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";
  drv = name: {
    type = "derivation";
    inherit name;
    outPath = storePath name;
    outputs = [ "out" ];
  };
in
{
  coreutils = drv "coreutils-9.5";
  openssh = drv "openssh-10.0p2";
  darling-test = drv "darling-0.1.20251023";
  # As nixpkgs' alias for it.
  darling = throw "'darling' has been removed due to vendoring Python2";

  callPackage = path: args:
    if baseNameOf (toString path) == "package.nix" && args == { }
    then drv "darling-sshd"
    else throw "pkgs stub: callPackage ${toString path}";

  writeShellScript = name: text:
    let script = "#!/nix/store/00000000000000000000000000000000-bash-5.2/bin/bash\n" + text;
    in drv name // {
      outPath = if inlineScripts then script else storePath "${builtins.hashString "sha256" script}-${name}";
    };
}
