# darling-sshd. `make run` serves on 127.0.0.1:2222; `make test` installs
# what a fresh Debian machine lacks and runs vet, unit and integration tests.

SHELL    := /bin/bash
GO       ?= go
BIN      := bin
RUN_DIR  := .run
PORT     ?= 2222
DEB_PKGS := openssh-client openssh-server nix-bin tmux ssh-audit rsync gcc
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: build run test deps vet lint clean soak fuzz bench xcrypto

build:
	$(GO) build -o $(BIN)/darling-sshd ./cmd/darling-sshd

# run: a complete local builder: serve on 127.0.0.1:$(PORT) with every
# file under $(RUN_DIR)/ (host and client keys, known_hosts, the status
# socket, the prefix), the prefix prepared by init, and the lines that
# register it with the local Nix and build on it. Without a real `darling`,
# the stand-in launcher test fixture is used, and said so loudly. Ctrl-C
# stops it (a second Ctrl-C ends running sessions at once); the container
# is stopped only if this server started it.
run: build
	@mkdir -p $(RUN_DIR)
	@set -e; \
	run=$(abspath $(RUN_DIR)); bin=$(abspath $(BIN))/darling-sshd; nixconf=""; \
	if command -v darling >/dev/null 2>&1; then \
		launcher=$$(command -v darling); \
		echo "darling-sshd: using Darling at $$launcher"; \
	else \
		$(GO) build -o $(BIN)/darling-standin ./integration/standin; \
		launcher=$(abspath $(BIN))/darling-standin; \
		nixconf="--nix-conf extra-platforms=x86_64-darwin"; \
		echo "######################################################################"; \
		echo "## WARNING: NO DARLING INSTALLED. Using the STAND-IN LAUNCHER, a TEST"; \
		echo "## FIXTURE ($$launcher):"; \
		echo "## commands run in a Linux chroot imitating a prefix, NOT in macOS;"; \
		echo "## its Nix is the host's Linux Nix, so init adds extra-platforms."; \
		echo "######################################################################"; \
	fi; \
	[ -f $$run/client_key ] || ssh-keygen -q -t ed25519 -N '' -C darling-sshd-run -f $$run/client_key; \
	$$bin init --prefix $$run/prefix --darling "$$launcher" --stop-container $$nixconf; \
	echo; \
	echo "Once it listens, in another terminal (as root):"; \
	echo "  ssh -p $(PORT) -i $$run/client_key -o UserKnownHostsFile=$$run/known_hosts root@127.0.0.1 uname"; \
	echo "  $$bin register --state-dir $$run     # ssh config, known_hosts, /etc/nix/machines; --undo removes them"; \
	echo "  $$bin check                          # as Nix connects: both protocols"; \
	echo "  nix-build --no-out-link -E 'derivation { name = \"hello\"; system = \"x86_64-darwin\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo hello from the builder > \$$out\" ]; }'"; \
	echo; \
	exec $$bin serve --listen 127.0.0.1:$(PORT) --prefix $$run/prefix --darling "$$launcher" \
		--host-key $$run/ssh_host_ed25519_key --authorized-keys $$run/client_key.pub \
		--known-hosts-out $$run/known_hosts --state-dir $$run --stop-container

# deps installs the Debian packages the tests use, only those missing,
# without starting their services.
deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		policy=/usr/sbin/policy-rc.d; added=""; \
		if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; added=1; fi; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; status=$$?; \
		[ -z "$$added" ] || rm -f $$policy; \
		exit $$status; \
	fi

vet:
	$(GO) vet ./...

# The tests that evaluate nix/module.nix need nixpkgs' lib on NIX_PATH:
# ../shared/nixpkgs when that folder exists (they skip without it).
test: deps vet
	if test -d $(abspath $(CURDIR)/../shared/nixpkgs); then export NIX_PATH=nixpkgs=$(abspath $(CURDIR)/../shared/nixpkgs); fi; \
	$(GO) test -race -count=1 -timeout 15m ./...
	cd $(XCRYPTO) && $(GO) vet ./... && $(GO) test -count=1 ./ssh/...

# xcrypto: refresh third_party/x-crypto, the copy of golang.org/x/crypto that
# go.mod's replace points to, from upstream XCRYPTO_VERSION plus our patches
# (see third_party/README.md), gofmt'd like the rest of the tree. Only the
# packages the build and x/crypto/ssh's tests import are kept.
XCRYPTO         := third_party/x-crypto
XCRYPTO_VERSION := v0.59.0
XCRYPTO_PATCHES := $(sort $(wildcard third_party/x-crypto-*.patch))
XCRYPTO_PKGS    := blowfish chacha20 chacha20poly1305 cryptobyte cryptobyte/asn1 curve25519 internal/alias \
	internal/poly1305 ssh/internal/bcrypt_pbkdf ssh/knownhosts ssh/terminal
xcrypto:
	@set -e; \
	src=$$(GOFLAGS=-mod=mod $(GO) mod download -json golang.org/x/crypto@$(XCRYPTO_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	test -d "$$src"; \
	rm -rf $(XCRYPTO); mkdir -p $(XCRYPTO)/ssh/testdata; \
	cp "$$src"/go.mod "$$src"/go.sum "$$src"/LICENSE "$$src"/PATENTS $(XCRYPTO)/; \
	for d in $(XCRYPTO_PKGS); do \
		mkdir -p $(XCRYPTO)/$$d; \
		find "$$src"/$$d -maxdepth 1 -type f ! -name '*_test.go' -exec cp {} $(XCRYPTO)/$$d/ \; ; \
	done; \
	find "$$src"/ssh -maxdepth 1 -type f -exec cp {} $(XCRYPTO)/ssh/ \; ; \
	cp "$$src"/ssh/testdata/*.go $(XCRYPTO)/ssh/testdata/; \
	chmod -R u+w $(XCRYPTO); \
	for p in $(XCRYPTO_PATCHES); do patch -d $(XCRYPTO) -p1 --no-backup-if-mismatch < $$p; done; \
	gofmt -w $(XCRYPTO); \
	echo "$(XCRYPTO): golang.org/x/crypto $(XCRYPTO_VERSION) + $(XCRYPTO_PATCHES)"

# soak: 10,000 sequential connections and 200 concurrent sessions against
# one server; its files, goroutines and memory must return to where they
# started. Not part of `make test`.
soak: deps
	$(GO) test -tags soak -count=1 -timeout 60m -run TestSoak -v ./integration

# bench: the same workloads against darling-sshd and OpenSSH's sshd (started
# here, ForceCommand through the same stand-in launcher); prints a table and
# writes bench.json and bench.md to OUT. Not part of `make test`.
OUT ?= bench-results
bench: deps
	@mkdir -p $(OUT)
	set -o pipefail; $(GO) test -run '^$$' -bench . -benchmem ./darlingexec | tee $(abspath $(OUT))/gobench.txt
	DARLING_SSHD_NORACE=1 BENCH_OUT=$(abspath $(OUT)) $(GO) test -tags bench -count=1 -timeout 60m -run TestBench -v ./integration

# fuzz: each fuzz target for FUZZTIME (their seed corpora run in make test).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseAuthorizedKeys -fuzztime $(FUZZTIME) ./auth
	$(GO) test -run '^$$' -fuzz FuzzParseOptions -fuzztime $(FUZZTIME) ./auth
	$(GO) test -run '^$$' -fuzz FuzzAcceptEnv -fuzztime $(FUZZTIME) ./sshserver
	$(GO) test -run '^$$' -fuzz FuzzPtyRequest -fuzztime $(FUZZTIME) ./sshserver
	$(GO) test -run '^$$' -fuzz FuzzScript -fuzztime $(FUZZTIME) ./darlingexec

lint: vet
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) run $(STATICCHECK) ./...

clean:
	-[ -x $(BIN)/darling-standin ] && DPREFIX=$(CURDIR)/$(RUN_DIR)/prefix $(BIN)/darling-standin shutdown
	rm -rf $(BIN) $(RUN_DIR)
