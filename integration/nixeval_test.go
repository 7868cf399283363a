package integration

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// These tests evaluate nix/module.nix with nixpkgs' own module system
// (lib.evalModules from <nixpkgs/lib>), with the NixOS options it sets
// declared as nixpkgs declares them (integration/testdata/nixeval/), and
// compare what it produces with what the binary prints for the same
// settings and with the plain unit nix/darling-sshd.service.

const nixevalDir = "integration/testdata/nixeval" // from the repository root

// nixosEnv is the environment nix-instantiate runs in here: NIX_PATH as
// given, else Nix's default search path (a channel of HOME's or root's).
func nixosEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if p, ok := os.LookupEnv("NIX_PATH"); ok {
		env = append(env, "NIX_PATH="+p)
	}
	return env
}

// needNixpkgs skips the test unless <nixpkgs/lib> is found.
func needNixpkgs(t *testing.T) {
	t.Helper()
	cmd := exec.Command("nix-instantiate", "--find-file", "nixpkgs/lib")
	cmd.Env = nixosEnv()
	if err := cmd.Run(); err != nil {
		t.Skip("no <nixpkgs/lib> on NIX_PATH: run with NIX_PATH=nixpkgs=/path/to/nixpkgs (make test sets it to ../shared/nixpkgs when that folder exists)")
	}
}

// evalNixOS evaluates testdata/nixeval/eval.nix with args (the body of
// its argument set) and returns its JSON, or nix-instantiate's error.
func evalNixOS(t *testing.T, args string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E", "import ./"+nixevalDir+"/eval.nix { "+args+" }")
	cmd.Dir = ".."
	cmd.Env = nixosEnv()
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return nil, fmt.Errorf("%v\n%s", err, ee.Stderr)
	}
	return out, err
}

// nixosEval is what eval.nix gives.
type nixosEval struct {
	Package, DarlingPackage string
	Assertions              []struct {
		Assertion bool
		Message   string
	}
	Service *struct {
		Enable          bool
		Description     string
		WantedBy, After []string
		Path            []string
		Environment     map[string]string
		ServiceConfig   map[string]any
	}
	Darling struct {
		Enable  bool
		Package string
	}
	ActivationScripts map[string]struct {
		Deps []string
		Text string
	}
	BuildMachines     []nixosMachine
	DistributedBuilds bool
	NixSettings       map[string]any
	SSHExtraConfig    string
}

// nixosMachine is an entry of nix.buildMachines, every field as the
// submodule gives it.
type nixosMachine struct {
	HostName                             string
	Protocol, System, SSHUser, SSHKey    *string
	Systems                              []string
	MaxJobs                              int
	SpeedFactor                          float64
	SupportedFeatures, MandatoryFeatures []string
	PublicHostKey                        *string
}

func evalModule(t *testing.T, settings string) nixosEval {
	t.Helper()
	out, err := evalNixOS(t, "settings = { "+settings+" };")
	if err != nil {
		t.Fatalf("evaluating the module with { %s }: %v", settings, err)
	}
	var ev nixosEval
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatalf("eval.nix output %s: %v", out, err)
	}
	return ev
}

// builderSettings are services.darling-builder's options a configuration
// sets; a zero field is left to the module's default, which must be the
// binary's own.
type builderSettings struct {
	Port                 int
	PrefixPath           string
	PrefixStyle          string
	Protocol             string
	SSHKeyPath           string
	MaxJobs, SpeedFactor int
	Supported, Mandatory []string
	ShareStore           bool
	InstallNix           *bool // nil: left to the default
	NixVersion           string
	PublicHostKey        string // base64, from HostKeyFile
	HostKeyFile          string
	ExtraNixConf         string                   // a Nix attribute set
	NixConf              []darlingexec.NixSetting // what init makes of ExtraNixConf
}

func nixString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", `\$`, "\n", `\n`, "\r", `\r`, "\t", `\t`).Replace(s) + `"`
}

func nixList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = nixString(s)
	}
	return "[ " + strings.Join(q, " ") + " ]"
}

// nix is the settings as the body of a Nix attribute set.
func (s builderSettings) nix() string {
	var b strings.Builder
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s; ", k, v) }
	for k, v := range map[string]string{"prefixPath": s.PrefixPath, "prefixStyle": s.PrefixStyle, "protocol": s.Protocol,
		"sshKeyPath": s.SSHKeyPath, "nixVersion": s.NixVersion, "publicHostKey": s.PublicHostKey} {
		if v != "" {
			set(k, nixString(v))
		}
	}
	for k, v := range map[string]int{"port": s.Port, "maxJobs": s.MaxJobs, "speedFactor": s.SpeedFactor} {
		if v != 0 {
			set(k, strconv.Itoa(v))
		}
	}
	if s.Supported != nil {
		set("supportedFeatures", nixList(s.Supported))
	}
	if s.Mandatory != nil {
		set("mandatoryFeatures", nixList(s.Mandatory))
	}
	if s.ShareStore {
		set("shareStore", "true")
	}
	if s.InstallNix != nil {
		set("installNix", strconv.FormatBool(*s.InstallNix))
	}
	if s.ExtraNixConf != "" {
		set("extraNixConf", s.ExtraNixConf)
	}
	return b.String()
}

// machinesLineArgs and sshConfigArgs are the binary's flags for the same
// settings.
func (s builderSettings) machinesLineArgs() []string {
	args := []string{"machines-line"}
	if s.Protocol != "" {
		args = append(args, "--protocol", s.Protocol)
	}
	if s.MaxJobs != 0 {
		args = append(args, "--max-jobs", strconv.Itoa(s.MaxJobs))
	}
	if s.SpeedFactor != 0 {
		args = append(args, "--speed-factor", strconv.Itoa(s.SpeedFactor))
	}
	if s.Supported != nil {
		args = append(args, "--supported-features", strings.Join(s.Supported, ","))
	}
	if s.Mandatory != nil {
		args = append(args, "--mandatory-features", strings.Join(s.Mandatory, ","))
	}
	if s.SSHKeyPath != "" {
		args = append(args, "--identity", s.SSHKeyPath)
	}
	if s.PublicHostKey != "" {
		return append(args, "--host-key", s.HostKeyFile)
	}
	return append(args, "--no-public-host-key")
}

func (s builderSettings) sshConfigArgs() []string {
	args := []string{"ssh-config"}
	if s.Port != 0 {
		args = append(args, "--listen", "127.0.0.1:"+strconv.Itoa(s.Port))
	}
	if s.SSHKeyPath != "" {
		args = append(args, "--identity", s.SSHKeyPath)
	}
	return args
}

// serveFlags and initFlags are the flags serve and init get for the
// settings, beyond their defaults.
func (s builderSettings) serveFlags() map[string][]string {
	f := s.launcherFlags()
	if s.Port != 0 {
		f["listen"] = []string{"127.0.0.1:" + strconv.Itoa(s.Port)}
	}
	if s.SSHKeyPath != "" {
		f["authorized-keys"] = []string{s.SSHKeyPath + ".pub"}
	}
	return f
}

func (s builderSettings) initFlags() map[string][]string {
	f := s.launcherFlags()
	if s.MaxJobs != 0 {
		f["max-jobs"] = []string{strconv.Itoa(s.MaxJobs)}
	}
	var feats []string
	for _, x := range append(slices.Clone(s.Supported), s.Mandatory...) {
		if !slices.Contains(feats, x) {
			feats = append(feats, x)
		}
	}
	if feats != nil {
		f["system-features"] = []string{strings.Join(feats, ",")}
	}
	if s.ShareStore {
		f["share-store"] = []string{"true"}
	}
	for _, c := range s.NixConf {
		f["nix-conf"] = append(f["nix-conf"], c.String())
	}
	return f
}

// The module runs Darling's launcher through the setuid wrapper NixOS
// makes of programs.darling.
const nixosDarling = "/run/wrappers/bin/darling"

func (s builderSettings) launcherFlags() map[string][]string {
	f := map[string][]string{"darling": {nixosDarling}}
	if s.PrefixPath != "" {
		f["prefix"] = []string{s.PrefixPath}
	}
	if s.PrefixStyle != "" {
		f["prefix-style"] = []string{s.PrefixStyle}
	}
	return f
}

// flagDefaults reads a subcommand's flags and their defaults from its -h
// output: a flag with no default shown has "" ("false" for a boolean).
func flagDefaults(t *testing.T, sub string) map[string]string {
	t.Helper()
	cmd := exec.Command(bins.server, sub, "-h")
	cmd.Env = []string{noRaceExitSleep}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("darling-sshd %s -h: %v\n%s", sub, err, out)
	}
	defaults := map[string]string{}
	def := regexp.MustCompile(`\(default ("[^"]*"|\S+)\)$`)
	name := ""
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); strings.HasPrefix(l, "  -") && len(f) > 0 {
			name = strings.TrimPrefix(f[0], "-")
			defaults[name] = ""
			if len(f) == 1 {
				defaults[name] = "false"
			}
		} else if m := def.FindStringSubmatch(l); m != nil && name != "" {
			defaults[name] = strings.Trim(m[1], `"`)
		}
	}
	if len(defaults) < 5 {
		t.Fatalf("darling-sshd %s -h: no flags read from\n%s", sub, out)
	}
	return defaults
}

// effectiveFlags is what each flag of a darling-sshd command line is set
// to, given or by default: a command line with the same meaning gives
// the same map. A repeated flag keeps every value, in order.
func effectiveFlags(t *testing.T, defaults map[string]string, args []string) map[string][]string {
	t.Helper()
	eff := map[string][]string{}
	given := map[string]bool{}
	for i := 0; i < len(args); i++ {
		name, value, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		def, ok := defaults[name]
		if !ok || !strings.HasPrefix(args[i], "-") {
			t.Fatalf("%q: %q is not a flag of the command", args, args[i])
		}
		if !hasValue {
			if def == "false" {
				value = "true"
			} else if i++; i < len(args) {
				value = args[i]
			}
		}
		if !given[name] {
			eff[name] = nil
		}
		given[name] = true
		eff[name] = append(eff[name], value)
	}
	for name, def := range defaults {
		if !given[name] && def != "" {
			eff[name] = []string{def}
		}
	}
	return eff
}

// withDefaults applies explicit flags over a subcommand's defaults.
func withDefaults(defaults map[string]string, flags map[string][]string) map[string][]string {
	eff := map[string][]string{}
	for name, def := range defaults {
		if def != "" {
			eff[name] = []string{def}
		}
	}
	for name, v := range flags {
		eff[name] = v
	}
	return eff
}

// diffFlags lists the flags two effective maps disagree on.
func diffFlags(got, want map[string][]string, ignore ...string) []string {
	var d []string
	for _, m := range []map[string][]string{got, want} {
		for name := range m {
			if !slices.Contains(ignore, name) && !slices.Equal(got[name], want[name]) && !slices.Contains(d, name) {
				d = append(d, name)
			}
		}
	}
	slices.Sort(d)
	var out []string
	for _, name := range d {
		out = append(out, fmt.Sprintf("--%s: %q, want %q", name, got[name], want[name]))
	}
	return out
}

// nixosMachinesLine is a nix.buildMachines entry as NixOS writes it into
// /etc/nix/machines (nix-remote-build.nix, for Nix 2.4 and later):
// mandatory features are listed among the supported ones too.
func nixosMachinesLine(m nixosMachine) string {
	or := func(p *string, alt string) string {
		if p == nil {
			return alt
		}
		return *p
	}
	uri := m.HostName
	if m.SSHUser != nil {
		uri = *m.SSHUser + "@" + uri
	}
	if m.Protocol != nil {
		uri = *m.Protocol + "://" + uri
	}
	systems := "-"
	if m.System != nil {
		systems = *m.System
	} else if len(m.Systems) > 0 {
		systems = strings.Join(m.Systems, ",")
	}
	return strings.Join([]string{uri, systems, or(m.SSHKey, "-"), strconv.Itoa(m.MaxJobs),
		strconv.FormatFloat(m.SpeedFactor, 'f', -1, 64), machinesListOrDash(append(slices.Clone(m.SupportedFeatures), m.MandatoryFeatures...)),
		machinesListOrDash(m.MandatoryFeatures), or(m.PublicHostKey, "-")}, " ")
}

func machinesListOrDash(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ",")
}

// machinesLineAsNixReadsIt is a machines line as Nix takes it: a builder
// supports its mandatory features whether they are listed as supported
// or not, and each list is a set.
func machinesLineAsNixReadsIt(t *testing.T, line string) []string {
	t.Helper()
	f := strings.Fields(line)
	if len(f) != 8 {
		t.Fatalf("machines line %q: %d fields, want 8", line, len(f))
	}
	set := func(s ...string) string {
		var l []string
		for _, x := range s {
			for _, y := range strings.Split(x, ",") {
				if y != "-" && !slices.Contains(l, y) {
					l = append(l, y)
				}
			}
		}
		slices.Sort(l)
		return strings.Join(l, ",")
	}
	f[1] = set(f[1])
	f[5] = set(f[5], f[6])
	f[6] = set(f[6])
	return f
}

// unitFile is a systemd unit file: each section's settings, in order.
type unitFile map[string][][2]string

func parseUnitFile(t *testing.T, path string) unitFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l[0] == '#' || l[0] == ';':
		case l[0] == '[' && l[len(l)-1] == ']':
			section = l[1 : len(l)-1]
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("%s: %q", path, l)
			}
			u[section] = append(u[section], [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	return u
}

// values are a setting's values, each line one.
func (u unitFile) values(section, key string) []string {
	var v []string
	for _, kv := range u[section] {
		if kv[0] == key {
			v = append(v, kv[1])
		}
	}
	return v
}

// serviceLines renders the module's serviceConfig as NixOS writes it into
// the unit: a list is one line per item, booleans are true and false.
func serviceLines(t *testing.T, cfg map[string]any) map[string][]string {
	t.Helper()
	one := func(k string, v any) string {
		switch v := v.(type) {
		case bool:
			return strconv.FormatBool(v)
		case float64:
			return strconv.FormatFloat(v, 'f', -1, 64)
		case string:
			return v
		}
		t.Fatalf("serviceConfig.%s: %#v", k, v)
		return ""
	}
	lines := map[string][]string{}
	for k, v := range cfg {
		if l, ok := v.([]any); ok {
			for _, x := range l {
				lines[k] = append(lines[k], one(k, x))
			}
		} else {
			lines[k] = []string{one(k, v)}
		}
	}
	return lines
}

// settingWords is a non-Exec setting's value as systemd reads it: its
// lines' words (a list setting accumulates over lines), booleans spelled
// one way.
func settingWords(lines []string) []string {
	var w []string
	for _, l := range lines {
		for _, x := range strings.Fields(l) {
			switch x {
			case "yes", "true", "on":
				x = "yes"
			case "no", "false", "off":
				x = "no"
			}
			w = append(w, x)
		}
	}
	return w
}

// execWords is an Exec line with its program named by its base name:
// the module's programs are store paths where the plain unit's are in
// /usr/local/bin or /bin.
func execWords(line string) []string {
	w := strings.Fields(line)
	if len(w) > 0 {
		flags := w[0][:len(w[0])-len(strings.TrimLeft(w[0], "-@:+!"))]
		w[0] = flags + filepath.Base(w[0][len(flags):])
	}
	return w
}

// TestNixModuleEval: the module, evaluated by nixpkgs' module system for
// several configurations, produces a service, a builder entry and an ssh
// configuration that equal what the binary prints for the same settings
// and what the plain unit says, and its assertions hold.
func TestNixModuleEval(t *testing.T) {
	needNixpkgs(t)
	hk := filepath.Join(t.TempDir(), "hk")
	b64 := strings.TrimSpace(goCLI(t, "hostkey", "--host-key", hk, "--format", "base64"))
	unit := parseUnitFile(t, "../nix/darling-sshd.service")
	serveDefaults, initDefaults := flagDefaults(t, "serve"), flagDefaults(t, "init")
	keyDir := t.TempDir()
	yes, no := true, false

	for _, tc := range []struct {
		name string
		s    builderSettings
	}{
		{"defaults", builderSettings{}},
		{"ssh-ng", builderSettings{Protocol: "ssh-ng", MaxJobs: 2, Supported: []string{"big-parallel"}}},
		{"publicHostKey", builderSettings{PublicHostKey: b64, HostKeyFile: hk, SpeedFactor: 3}},
		{"installNix", builderSettings{InstallNix: &yes, NixVersion: "2.28.4"}},
		{"installNix off", builderSettings{InstallNix: &no, Port: 2200}},
		{"second prefix", builderSettings{
			PrefixPath: "/var/lib/darling-builder/second prefix", PrefixStyle: "flag", Port: 2201,
			SSHKeyPath: filepath.Join(keyDir, "builder-key"), MaxJobs: 8, SpeedFactor: 2,
			Supported: []string{"big-parallel", "benchmark"}, Mandatory: []string{"darwin", "benchmark"},
			ExtraNixConf: `{ extra-substituters = [ "https://a.example" "https://b.example/$x" ]; min-free = 2147483648; keep-going = true; }`,
			NixConf: []darlingexec.NixSetting{{Key: "extra-substituters", Value: "https://a.example https://b.example/$x"},
				{Key: "keep-going", Value: "true"}, {Key: "min-free", Value: "2147483648"}},
		}},
		{"shareStore", builderSettings{ShareStore: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.s
			ev := evalModule(t, s.nix())
			for _, a := range ev.Assertions {
				if !a.Assertion {
					t.Errorf("assertion fails: %s", a.Message)
				}
			}
			if len(ev.Assertions) < 5 {
				t.Errorf("assertions: %+v", ev.Assertions)
			}
			svc := ev.Service
			if svc == nil {
				t.Fatal("no systemd.services.darling-sshd")
			}
			if !ev.Darling.Enable || ev.Darling.Package != ev.DarlingPackage {
				t.Errorf("programs.darling %+v: want enabled with darlingPackage %s (%s is its wrapper)", ev.Darling, ev.DarlingPackage, nixosDarling)
			}
			prefix := orDefault(s.PrefixPath, "/var/lib/darling-builder/prefix")
			if want := map[string]string{"DPREFIX": prefix, "HOME": "/root"}; !maps.Equal(svc.Environment, want) {
				t.Errorf("environment %v, want %v", svc.Environment, want)
			}
			lines := serviceLines(t, svc.ServiceConfig)

			// ExecStart: serve with the flags the settings mean.
			start := lines["ExecStart"]
			if len(start) != 1 {
				t.Fatalf("ExecStart %q", start)
			}
			argv := systemdSplit(t, start[0])
			if argv[0] != ev.Package+"/bin/darling-sshd" || argv[1] != "serve" {
				t.Fatalf("ExecStart %q: want %s/bin/darling-sshd serve", start[0], ev.Package)
			}
			acceptsFlags(t, start[0])
			serve := effectiveFlags(t, serveDefaults, argv[2:])
			for _, d := range diffFlags(serve, withDefaults(serveDefaults, s.serveFlags())) {
				t.Errorf("ExecStart: %s", d)
			}

			// ExecStartPre: Nix's install script if asked for, then init
			// with the flags the settings mean.
			pre := lines["ExecStartPre"]
			installNix := s.InstallNix != nil && *s.InstallNix
			if wantPre := map[bool]int{false: 1, true: 2}[installNix]; len(pre) != wantPre {
				t.Fatalf("ExecStartPre %q: want %d commands", pre, wantPre)
			}
			if installNix {
				if !regexp.MustCompile(`^/nix/store/[^/]+-darling-builder-install-nix$`).MatchString(pre[0]) {
					t.Errorf("ExecStartPre %q: want the install script first", pre[0])
				}
				checkInstallScript(t, s)
			}
			initLine := pre[len(pre)-1]
			argv = systemdSplit(t, initLine)
			if argv[0] != ev.Package+"/bin/darling-sshd" || argv[1] != "init" {
				t.Fatalf("ExecStartPre %q: want %s/bin/darling-sshd init", initLine, ev.Package)
			}
			acceptsFlags(t, initLine)
			initEff := effectiveFlags(t, initDefaults, argv[2:])
			for _, d := range diffFlags(initEff, withDefaults(initDefaults, s.initFlags())) {
				t.Errorf("ExecStartPre: %s", d)
			}
			if !s.ShareStore && !t.Failed() {
				runInitLine(t, argv, initEff)
			}

			// The builder: the machines line and the ssh_config block
			// the binary prints for the same settings.
			if len(ev.BuildMachines) != 1 {
				t.Fatalf("nix.buildMachines: %+v", ev.BuildMachines)
			}
			got := nixosMachinesLine(ev.BuildMachines[0])
			want := strings.TrimSpace(goCLI(t, s.machinesLineArgs()...))
			if g, w := machinesLineAsNixReadsIt(t, got), machinesLineAsNixReadsIt(t, want); !slices.Equal(g, w) {
				t.Errorf("nix.buildMachines gives the machines line\n %s\nwant (darling-sshd %s)\n %s", got, strings.Join(s.machinesLineArgs(), " "), want)
			}
			if want := goCLI(t, s.sshConfigArgs()...); ev.SSHExtraConfig != want {
				t.Errorf("programs.ssh.extraConfig:\n%s\nwant (darling-sshd %s):\n%s", ev.SSHExtraConfig, strings.Join(s.sshConfigArgs(), " "), want)
			}
			// The ssh configuration reaches the server the unit starts:
			// its address, host key alias and known hosts file.
			if want := goCLI(t, "ssh-config", "--listen", serve["listen"][0], "--host-alias", serve["host-alias"][0],
				"--known-hosts-out", serve["known-hosts-out"][0], "--identity", strings.TrimSuffix(serve["authorized-keys"][0], ".pub")); ev.SSHExtraConfig != want {
				t.Errorf("programs.ssh.extraConfig does not reach serve %v:\n%s\nwant:\n%s", serve, ev.SSHExtraConfig, want)
			}
			if !ev.DistributedBuilds || ev.NixSettings["builders-use-substitutes"] != true {
				t.Errorf("nix.distributedBuilds %v, nix.settings %v", ev.DistributedBuilds, ev.NixSettings)
			}

			// The unit: every setting the plain unit has, and no other.
			compareWithUnit(t, unit, svc.Description, svc.After, svc.WantedBy, lines, svc.Environment, tc.name == "defaults", serveDefaults, initDefaults)

			// The key the Nix daemon logs in with, made on activation.
			act, ok := ev.ActivationScripts["darling-builder-keys"]
			if !ok || !slices.Contains(act.Deps, "users") {
				t.Fatalf("activation scripts %+v", ev.ActivationScripts)
			}
			if s.SSHKeyPath != "" {
				checkKeyActivation(t, act.Text, s.SSHKeyPath)
			}
		})
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// compareWithUnit compares the module's service with the plain unit: the
// same settings, with the same values but for the Exec lines, which for
// the default settings (exact) run the same commands but for where
// Darling's launcher and the binaries are.
func compareWithUnit(t *testing.T, unit unitFile, description string, after, wantedBy []string, lines map[string][]string,
	env map[string]string, defaults bool, serveDefaults, initDefaults map[string]string) {
	t.Helper()
	if got := unit.values("Unit", "Description"); !slices.Equal(got, []string{description}) {
		t.Errorf("description %q; the unit's %q", description, got)
	}
	if got := settingWords(unit.values("Unit", "After")); !slices.Equal(got, after) {
		t.Errorf("after %q; the unit's %q", after, got)
	}
	if got := settingWords(unit.values("Install", "WantedBy")); !slices.Equal(got, wantedBy) {
		t.Errorf("wantedBy %q; the unit's %q", wantedBy, got)
	}
	var unitKeys, keys []string
	for _, kv := range unit["Service"] {
		if kv[0] != "Environment" && !slices.Contains(unitKeys, kv[0]) {
			unitKeys = append(unitKeys, kv[0])
		}
	}
	for k := range lines {
		keys = append(keys, k)
	}
	slices.Sort(unitKeys)
	slices.Sort(keys)
	if !slices.Equal(keys, unitKeys) {
		t.Errorf("serviceConfig sets %q; the unit %q", keys, unitKeys)
	}
	for _, k := range unitKeys {
		u := unit.values("Service", k)
		switch k {
		case "ExecStart", "ExecStartPre":
			if !defaults {
				continue
			}
			defs := map[string]map[string]string{"ExecStart": serveDefaults, "ExecStartPre": initDefaults}[k]
			m := lines[k]
			if len(m) != len(u) {
				t.Errorf("%s %q; the unit's %q", k, m, u)
				continue
			}
			for i := range u {
				ua, ma := systemdSplit(t, u[i]), systemdSplit(t, m[i])
				if ua[1] != ma[1] {
					t.Errorf("%s %q; the unit's %q", k, m[i], u[i])
					continue
				}
				for _, d := range diffFlags(effectiveFlags(t, defs, ma[2:]), effectiveFlags(t, defs, ua[2:]), "darling") {
					t.Errorf("%s, compared with the unit's: %s", k, d)
				}
			}
		case "ExecReload", "ExecStopPost":
			if len(lines[k]) != len(u) {
				t.Errorf("%s %q; the unit's %q", k, lines[k], u)
				continue
			}
			for i := range u {
				if !slices.Equal(execWords(lines[k][i]), execWords(u[i])) {
					t.Errorf("%s %q; the unit's %q", k, lines[k][i], u[i])
				}
			}
		default:
			if !slices.Equal(settingWords(lines[k]), settingWords(u)) {
				t.Errorf("%s=%q; the unit's %q", k, lines[k], u)
			}
		}
	}
	if defaults {
		for _, e := range unit.values("Service", "Environment") {
			k, v, _ := strings.Cut(e, "=")
			if env[k] != v {
				t.Errorf("environment %s=%q; the unit's %q", k, env[k], v)
			}
		}
	}
}

// runInitLine runs the module's ExecStartPre init on a stand-in prefix
// (its launcher flags, checked above, swapped for a test prefix and the
// stand-in) and checks it writes the nix.conf the binary makes
// of the same options.
func runInitLine(t *testing.T, argv []string, eff map[string][]string) {
	t.Helper()
	prefix := tempPrefix(t)
	args := slices.Clone(argv[1:])
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--prefix":
			args[i+1] = prefix
		case "--darling":
			args[i+1] = bins.standin
		case "--prefix-style":
			args[i+1] = "env" // the stand-in takes the prefix as Darling does
		}
	}
	cmd := exec.Command(bins.server, args...)
	cmd.Env = []string{"HOME=/root", "PATH=/usr/bin:/bin", noRaceExitSleep}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%q: %v\n%s", args, err, out)
	}
	got, err := os.ReadFile(prefixView(t, prefix, "etc/nix/nix.conf"))
	if err != nil {
		t.Fatal(err)
	}
	o := darlingexec.InitOptions{}
	o.MaxJobs, _ = strconv.Atoi(eff["max-jobs"][0])
	if f := eff["system-features"]; f != nil {
		o.SystemFeatures = strings.Split(f[0], ",")
	}
	for _, c := range eff["nix-conf"] {
		s, err := darlingexec.ParseNixSetting(c)
		if err != nil {
			t.Fatal(err)
		}
		o.NixConf = append(o.NixConf, s)
	}
	if want := darlingexec.NixConf(o); string(got) != want {
		t.Errorf("init wrote:\n%s\nwant:\n%s", got, want)
	}
}

// checkInstallScript runs the module's install script (as written with
// inlineScripts) with a launcher that records its calls: with no Nix in
// the prefix it runs lib.installNixScript for the version asked for,
// through the launcher's shell; with Nix there, nothing.
func checkInstallScript(t *testing.T, s builderSettings) {
	t.Helper()
	out, err := evalNixOS(t, "settings = { "+s.nix()+" }; inlineScripts = true;")
	if err != nil {
		t.Fatal(err)
	}
	var ev nixosEval
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatal(err)
	}
	script := serviceLines(t, ev.Service.ServiceConfig)["ExecStartPre"][0]
	if !strings.HasPrefix(script, "#!") || !strings.Contains(script, nixosDarling) {
		t.Fatalf("install script:\n%s", script)
	}
	dir := t.TempDir()
	launcher := filepath.Join(dir, "darling")
	if err := os.WriteFile(launcher, []byte(`#!/bin/sh
echo "$DPREFIX $1 $2 $3" >> `+dir+`/calls
if [ "$2" = test ]; then exit $(cat `+dir+`/has-nix); fi
printf %s "$4" > `+dir+`/script
`), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "install")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(script, nixosDarling, launcher)), 0o755); err != nil {
		t.Fatal(err)
	}
	want := nixEval(t, `(import ./nix/lib.nix).installNixScript { version = "`+orDefault(s.NixVersion, "2.24.12")+`"; }`)
	prefix := orDefault(s.PrefixPath, "/var/lib/darling-builder/prefix")
	for _, hasNix := range []string{"1", "0"} {
		os.Remove(filepath.Join(dir, "calls"))
		os.WriteFile(filepath.Join(dir, "has-nix"), []byte(hasNix), 0o644)
		cmd := exec.Command("bash", path)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "DPREFIX=" + prefix}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("install script: %v\n%s", err, out)
		}
		calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
		wantCalls := prefix + " shell test -x\n"
		if hasNix == "1" {
			wantCalls += prefix + " shell /bin/sh -c\n"
		}
		if string(calls) != wantCalls {
			t.Errorf("with has-nix %s, the launcher was called:\n%s\nwant:\n%s", hasNix, calls, wantCalls)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "script")); string(got) != want {
		t.Errorf("the install script ran in the prefix:\n%s\nwant lib.installNixScript:\n%s", got, want)
	}
}

// checkKeyActivation runs the activation snippet (with the host's
// ssh-keygen for openssh's): it makes the key pair, private key 0600,
// and leaves it alone when it is there.
func checkKeyActivation(t *testing.T, text, key string) {
	t.Helper()
	text = regexp.MustCompile(`/nix/store/[^/]+-openssh-[^/]+`).ReplaceAllString(text, "/usr")
	runIt := func() {
		cmd := exec.Command("bash", "-euc", text)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("activation: %v\n%s\n%s", err, out, text)
		}
	}
	runIt()
	priv, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{key: 0o600, key + ".pub": 0o644} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %o", p, st, err, mode)
		}
	}
	if pub, _ := os.ReadFile(key + ".pub"); !strings.HasPrefix(string(pub), "ssh-ed25519 ") {
		t.Errorf("%s.pub: %q", key, pub)
	}
	runIt()
	if again, _ := os.ReadFile(key); string(again) != string(priv) {
		t.Error("a second activation replaced the key")
	}
}

// TestNixModuleDisabled: with enable = false the module sets nothing.
func TestNixModuleDisabled(t *testing.T) {
	needNixpkgs(t)
	ev := evalModule(t, "enable = false;")
	if ev.Service != nil || ev.Darling.Enable || len(ev.BuildMachines) != 0 || ev.DistributedBuilds ||
		len(ev.ActivationScripts) != 0 || ev.SSHExtraConfig != "" || len(ev.NixSettings) != 0 {
		t.Errorf("disabled, the module sets %+v", ev)
	}
	for _, a := range ev.Assertions {
		if strings.HasPrefix(a.Message, "services.darling-builder") {
			t.Errorf("disabled, the module asserts %q", a.Message)
		}
	}
}

// failedAssertions evaluates the module and returns the messages of its
// assertions that fail.
func failedAssertions(t *testing.T, settings string) []string {
	t.Helper()
	var failed []string
	for _, a := range evalModule(t, settings).Assertions {
		if !a.Assertion {
			failed = append(failed, a.Message)
		}
	}
	return failed
}

// TestNixModuleAssertions: a configuration that init, serve or the
// machines line would refuse trips one of the module's assertions,
// naming the option; the binary refuses the same values.
func TestNixModuleAssertions(t *testing.T) {
	needNixpkgs(t)
	long := "/var/lib/darling-builder/" + strings.Repeat("p", darlingexec.MaxPrefixLen-len("/var/lib/darling-builder/"))
	for _, tc := range []struct {
		settings, want string // want: "" for none
	}{
		{`prefixPath = "` + long + `";`, ""},
		{`prefixPath = "` + long + `p";`, "services.darling-builder.prefixPath: " + long + "p: want an absolute path of at most 83 bytes"},
		{`prefixPath = "var/lib/darling-builder/prefix";`, "want an absolute path"},
		{`prefixPath = "/home/builder/prefix";`, "services.darling-builder.prefixPath: /home/builder/prefix is in a folder the service cannot write"},
		{`prefixPath = "/etc/darling";`, "is in a folder the service cannot write"},
		{`prefixPath = "/srv/darling/prefix";`, ""},
		{`sshKeyPath = "/etc/nix/builder key";`, "services.darling-builder.sshKeyPath: /etc/nix/builder key: want an absolute path without spaces"},
		{`sshKeyPath = "/etc/nix/a,b";`, "services.darling-builder.sshKeyPath"},
		{`supportedFeatures = [ "big parallel" ];`, "services.darling-builder: system features big parallel"},
		{`mandatoryFeatures = [ "a,b" ];`, "system features a,b"},
	} {
		failed := failedAssertions(t, tc.settings)
		if tc.want == "" && len(failed) > 0 {
			t.Errorf("{ %s }: assertions fail: %q", tc.settings, failed)
		}
		if tc.want != "" && (len(failed) != 1 || !strings.Contains(failed[0], tc.want)) {
			t.Errorf("{ %s }: failed assertions %q, want one saying %q", tc.settings, failed, tc.want)
		}
	}
	// The binary refuses the key path the module refuses.
	for _, id := range []string{"/etc/nix/builder key", "/etc/nix/a,b"} {
		cmd := exec.Command(bins.server, "machines-line", "--no-public-host-key", "--identity", id)
		cmd.Env = []string{noRaceExitSleep}
		if err := cmd.Run(); err == nil {
			t.Errorf("machines-line --identity %q succeeds; the module refuses it", id)
		}
	}
	// extraNixConf: the module refuses what init refuses, no more.
	for _, kv := range [][2]string{
		{"max-jobs", "8"}, {"extra-max-jobs", "8"}, {"system-features", "kvm"}, {"extra-system-features", "kvm"},
		{"build-users-group", "nixbld"}, {"sandbox", "true"}, {"experimental-features", "ca-derivations"},
		{"trusted-users", "alice"}, {"include", "/etc/x"}, {"1st", "x"}, {"a.b", "x"}, {"post-build-hook", "/bin/x #y"}, {"post-build-hook", "/bin/a\n/bin/b"},
		{"extra-experimental-features", "ca-derivations"}, {"extra-trusted-users", "alice"}, {"substituters", ""},
		{"min-free", "1"}, {"keep_going", "true"}, {"post-build-hook", "/bin/hook \"quoted\""},
	} {
		cmd := exec.Command(bins.server, "init", "--nix-conf", kv[0]+"="+kv[1], "-h")
		cmd.Env = []string{noRaceExitSleep}
		initRefuses := cmd.Run() != nil
		failed := failedAssertions(t, "extraNixConf = { "+nixString(kv[0])+" = "+nixString(kv[1])+"; };")
		if moduleRefuses := len(failed) > 0; moduleRefuses != initRefuses {
			t.Errorf("extraNixConf %s = %q: the module's failed assertions %q; init refuses it: %v", kv[0], kv[1], failed, initRefuses)
		} else if moduleRefuses && (len(failed) != 1 || !strings.Contains(failed[0], "services.darling-builder.extraNixConf: darling-sshd init refuses "+kv[0]+":")) {
			t.Errorf("extraNixConf %s: failed assertions %q", kv[0], failed)
		}
	}
}

// TestNixModuleStubsBite: a copy of the module with a field NixOS does not
// have, or a value of the wrong type, fails evaluation with an error
// naming the option, as it would on NixOS: the declarations the module is
// evaluated with are closed and typed. The module this project replaced
// set nix.buildMachines' nonexistent port.
func TestNixModuleStubsBite(t *testing.T) {
	needNixpkgs(t)
	module, err := os.ReadFile("../nix/module.nix")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range []string{"lib.nix", "package.nix"} {
		b, err := os.ReadFile("../nix/" + f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range []struct {
		old, new string
		want     []string // in the error
	}{
		{"", "", nil}, // the copy itself evaluates
		{"inherit (cfg) protocol;", "inherit (cfg) protocol port;",
			[]string{"The option `nix.buildMachines.", ".port' does not exist"}},
		{"inherit (cfg) maxJobs speedFactor", "maxJobs = toString cfg.maxJobs; inherit (cfg) speedFactor",
			[]string{"nix.buildMachines.", ".maxJobs' is not of type `signed integer'"}},
		{"inherit (cfg) protocol;", `protocol = "ssh-ng2";`,
			[]string{"nix.buildMachines.", ".protocol' is not of type `one of <null>, \"ssh\", \"ssh-ng\"'"}},
		{`wantedBy = [ "multi-user.target" ];`, `wantedby = [ "multi-user.target" ];`,
			[]string{"The option `systemd.services.darling-sshd.wantedby' does not exist"}},
		{`Type = "notify";`, `Type = "notfy";`,
			[]string{"systemd.services.darling-sshd.serviceConfig' is not of type"}},
		{"nix.distributedBuilds = true;", "nix.distributedBuild = true;",
			[]string{"The option `nix.distributedBuild' does not exist"}},
	} {
		if strings.Count(string(module), tc.old) != 1 && tc.old != "" {
			t.Fatalf("nix/module.nix has %q %d times", tc.old, strings.Count(string(module), tc.old))
		}
		p := filepath.Join(dir, fmt.Sprintf("module%d.nix", i))
		if err := os.WriteFile(p, []byte(strings.Replace(string(module), tc.old, tc.new, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := evalNixOS(t, "module = "+p+";")
		switch {
		case tc.want == nil && err != nil:
			t.Errorf("the module's copy: %v", err)
		case tc.want != nil && err == nil:
			t.Errorf("%s instead of %s: evaluates", tc.new, tc.old)
		case tc.want != nil:
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s instead of %s: the error does not say %q:\n%v", tc.new, tc.old, w, err)
				}
			}
		}
	}
}
