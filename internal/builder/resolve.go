package builder

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/debian"
)

// The resolution pass runs mmdebstrap with the custom variant and no
// packages into a throwaway directory: it writes the same sources.list the
// real build gets (mmdebstrap's default mirror for the release with its
// -updates and -security suites, or spec.base.mirror) plus the extra
// repositories, runs apt-get update, and an extract hook asks apt-cache
// madison for every requested package. That takes a few seconds and fails
// fast on an unreachable mirror, a bad repository signature, an unknown
// package or a version no candidate satisfies, before the minute-long
// root filesystem build. The fresh package lists are kept in the cache, so
// the rootfs step's apt-get update downloads nothing new.

func (b *build) resolve(ctx context.Context, p *ResolveParams) error {
	if p.NeedsAnsible {
		if _, err := exec.LookPath("ansible-playbook"); err != nil {
			return errNoAnsible
		}
	}
	if err := os.MkdirAll(b.aptDir, 0o755); err != nil {
		return err
	}
	if err := b.lockCache(); err != nil {
		return err
	}
	for _, s := range p.Sources {
		b.progress(0.05, "fetching the signing key of "+stripUserinfo(s.URL))
		key, err := fetchKey(ctx, s.Key, b.opts.LocalFiles)
		if err != nil {
			return fmt.Errorf("signing key for %s: %w", stripUserinfo(s.URL), err)
		}
		if err := os.WriteFile(filepath.Join(b.aptDir, s.Name+".key"), key, 0o644); err != nil {
			return err
		}
		armored := armorKey(key)
		if err := os.WriteFile(filepath.Join(b.aptDir, s.Name+".sources"), []byte(deb822Source(s, inlineSignedBy(armored))), 0o644); err != nil {
			return err
		}
	}

	out := filepath.Join(b.work, "resolve")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	names := make([]string, 0, len(p.Packages)+len(b.queryVersions))
	for _, r := range p.Packages {
		names = append(names, r.Name)
	}
	for _, n := range b.queryVersions {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	hook := fmt.Sprintf(`set -e
APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-cache madison %s > %s
cat "$1"/etc/apt/sources.list > %s 2>/dev/null || true
%s`, strings.Join(quoteAll(names), " "), shq(filepath.Join(out, "madison")), shq(filepath.Join(out, "sources.list")), b.listsSyncOut())
	if len(p.BaseInstall) > 0 {
		hook += "\n" + simulateBase(p.BaseInstall, filepath.Join(out, "no-sources.d"), filepath.Join(out, "base-closure"))
	}

	args := []string{"--mode=root", "--variant=custom", "--format=null", "--skip=check/empty"}
	// Nothing of the image's architecture runs here (apt and the hook
	// run on the host): no emulation needed, so an update check of an
	// arm64 image works where binfmt_misc has no handler.
	if foreign(p.Architecture) {
		args = append(args, "--architectures="+p.Architecture, "--skip=check/qemu")
	}
	args = append(args, b.sourceHooks(p.Sources)...)
	args = append(args, "--setup-hook="+b.listsSyncIn(), "--extract-hook="+hook)
	args = append(args, p.Release, "/dev/null")
	args = append(args, mirrorArgs(p.Mirror, p.Release)...)
	b.progress(0.2, "apt-get update and package resolution")
	if err := b.runner.Run(ctx, b.mmdebstrap(args...)); err != nil {
		return fmt.Errorf("resolving packages (mirror, signatures, package lists): %w", err)
	}
	madison, err := os.ReadFile(filepath.Join(out, "madison"))
	if err != nil {
		return err
	}
	b.available = parseMadison(madison)
	pins, err := pickVersions(p.Packages, b.available)
	if err != nil {
		return err
	}
	b.pins = pins
	if len(p.BaseInstall) > 0 {
		sim, err := os.ReadFile(filepath.Join(out, "base-closure"))
		if err != nil {
			return err
		}
		b.baseClosure, b.baseUncached = baseClosure(sim, p.Packages, pins)
	}
	if p.Mirror != "" {
		b.mirror = p.Mirror
		b.suites = mirrorSuites(p.Release)
	} else if sl, err := os.ReadFile(filepath.Join(out, "sources.list")); err == nil {
		b.mirror = firstMirror(sl)
		b.suites = sourcesSuites(sl)
	}
	b.progress(1, fmt.Sprintf("%d packages resolved, %d pinned", len(p.Packages), len(pins)))
	return nil
}

// simulateBase is the part of the resolution hook that simulates the base
// layer's install (apt-get --simulate, recommends off as in the rootfs
// step) from the release's sources.list alone: the extra repositories'
// files in sources.list.d are left out by pointing apt at an empty
// directory instead. A failure is recorded in the output, not raised: the
// base is then built uncached, and the rootfs step reports apt's error.
func simulateBase(args []string, emptyDir, out string) string {
	return fmt.Sprintf(`mkdir -p %[1]s
if APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get --simulate -o Dir::Etc::SourceParts=%[1]s -o APT::Install-Recommends=false -o APT::Install-Suggests=false install %[2]s > %[3]s 2>&1; then :; else echo "E: apt-get --simulate exited with status $?" >> %[3]s; fi`,
		shq(emptyDir), strings.Join(quoteAll(args), " "), shq(out))
}

// baseClosure reads the simulated install of the base layer: it returns
// the closure, one "name version architecture" line per package, sorted;
// or, when that closure cannot key the layer, why not (the simulation
// failed, or a pinned base package is not the version apt would choose).
func baseClosure(sim []byte, reqs []PackageRequest, pins map[string]string) ([]string, string) {
	var lines []string
	versions := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(sim))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var failed string
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "E: ") && failed == "" {
			failed = strings.TrimPrefix(l, "E: ")
		}
		// Inst libc6 (2.41-12 Debian:13.2/stable [amd64]) []
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "Inst" || !strings.HasPrefix(f[2], "(") {
			continue
		}
		name, version, arch := f[1], strings.TrimPrefix(f[2], "("), ""
		for _, x := range f[3:] {
			if strings.HasPrefix(x, "[") {
				arch = strings.Trim(x, "[])")
				break
			}
		}
		versions[name] = version
		lines = append(lines, name+" "+version+" "+arch)
	}
	if failed != "" {
		return nil, "simulating its install failed: " + failed
	}
	if len(lines) == 0 {
		return nil, "simulating its install listed no packages"
	}
	for _, r := range reqs {
		if v, ok := pins[r.Name]; ok && !r.Layer && versions[r.Name] != v {
			return nil, fmt.Sprintf("%s is pinned to %s (%s), not apt's candidate %s", r.Name, v, r.Why, versions[r.Name])
		}
	}
	slices.Sort(lines)
	return lines, ""
}

// mirrorArgs are mmdebstrap's MIRROR arguments: none for its default
// mirror (with -updates and -security), else mirrorSuites from
// spec.base.mirror.
func mirrorArgs(mirror, release string) []string {
	if mirror == "" {
		return nil
	}
	var out []string
	for _, s := range mirrorSuites(release) {
		out = append(out, fmt.Sprintf("deb %s %s main", mirror, s))
	}
	return out
}

// mirrorSuites are the suites used from spec.base.mirror: the release and
// its -updates. Not -security: Debian's security updates are a separate
// archive (debian-security), not a suite of a mirror of the main one.
func mirrorSuites(release string) []string {
	return []string{release, release + "-updates"}
}

// sourcesSuites lists the suites of a sources.list's deb lines, in order.
func sourcesSuites(sl []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(sl))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			// Options: [arch=amd64 signed-by=...]
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 && !slices.Contains(out, f[1]) {
			out = append(out, f[1])
		}
	}
	return out
}

// sourceHooks copy the build-time sources files (with their keys inline)
// into the chroot before apt-get update.
func (b *build) sourceHooks(sources []AptSource) []string {
	var out []string
	for _, s := range sources {
		out = append(out, fmt.Sprintf("--setup-hook=copy-in %s /etc/apt/sources.list.d/", filepath.Join(b.aptDir, s.Name+".sources")))
	}
	return out
}

// madison maps package names to their available versions, newest first.
type madison map[string][]string

// parseMadison reads `apt-cache madison` output ("pkg | version | source").
func parseMadison(b []byte) madison {
	m := madison{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "|")
		if len(f) < 3 {
			continue
		}
		name, ver := strings.TrimSpace(f[0]), strings.TrimSpace(f[1])
		if name == "" || ver == "" || slices.Contains(m[name], ver) {
			continue
		}
		m[name] = append(m[name], ver)
	}
	for _, vs := range m {
		slices.SortFunc(vs, func(a, b string) int { return debian.Compare(b, a) })
	}
	return m
}

// pickVersions checks every request against the archive and returns the
// exact versions to pin (requests without a version constraint take the
// candidate and are not pinned). All problems are reported at once.
func pickVersions(reqs []PackageRequest, m madison) (map[string]string, error) {
	pins := map[string]string{}
	var problems []string
	for _, r := range reqs {
		vs := m[r.Name]
		if len(vs) == 0 {
			problems = append(problems, fmt.Sprintf("package %q (from %s) is not in any configured repository", r.Name, r.Why))
			continue
		}
		if r.Match == MatchAny {
			continue
		}
		var bad error
		i := slices.IndexFunc(vs, func(v string) bool {
			ok, err := r.Matches(v)
			if err != nil {
				bad = err
			}
			return ok
		})
		switch {
		case bad != nil:
			problems = append(problems, fmt.Sprintf("%s: %v", r.Why, bad))
		case i < 0:
			problems = append(problems, fmt.Sprintf("package %s has no version %s (from %s); available: %s", r.Name, r.Want(), r.Why, strings.Join(vs, ", ")))
		default:
			pins[r.Name] = vs[i]
		}
	}
	if len(problems) > 0 {
		return nil, inputErrorf("%s", strings.Join(problems, "; "))
	}
	return pins, nil
}

// firstMirror returns the URI of the first deb line of a sources.list.
func firstMirror(sl []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(sl))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "deb" {
			continue
		}
		for _, x := range f[1:] {
			if strings.Contains(x, "://") {
				return x
			}
		}
	}
	return ""
}

// fetchKey returns the key bytes of a resolved KeySource; file:// URLs
// only with localFiles (Options.LocalFiles).
func fetchKey(ctx context.Context, k imagev1.KeySource, localFiles bool) ([]byte, error) {
	switch {
	case k.Armored != "":
		return []byte(k.Armored), nil
	case k.URL != "":
		u, err := url.Parse(k.URL)
		if err != nil {
			return nil, err
		}
		if u.Scheme == "file" {
			if !localFiles {
				return nil, inputErrorf("signing key URL %s: file:// is read only by the nodeforge CLI on the spec author's machine, not by a builder in a cluster; use armored, configMapKeyRef or https://", u.Redacted())
			}
			return readKeyFile(u.Path)
		}
		// The key decides what apt trusts: fetch it over TLS only (the
		// offline repository on loopback excepted), redirects included.
		if err := checkKeyURL(u); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.URL, nil)
		if err != nil {
			return nil, err
		}
		client := &http.Client{Transport: keyTransport, CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return checkKeyURL(req.URL)
		}}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", u.Redacted(), resp.Status)
		}
		key, err := io.ReadAll(io.LimitReader(resp.Body, maxKeySize+1))
		if err != nil {
			return nil, err
		}
		if len(key) > maxKeySize {
			return nil, inputErrorf("the key at %s is larger than %d bytes", u.Redacted(), maxKeySize)
		}
		return key, nil
	case k.ConfigMapKeyRef != nil:
		return nil, fmt.Errorf("configMapKeyRef %s/%s is not resolved", k.ConfigMapKeyRef.Name, k.ConfigMapKeyRef.Key)
	}
	return nil, fmt.Errorf("no key source set")
}

// maxKeySize bounds a fetched signing key.
const maxKeySize = 1 << 20

// readKeyFile reads a local key file of at most maxKeySize bytes.
func readKeyFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	key, err := io.ReadAll(io.LimitReader(f, maxKeySize+1))
	if err != nil {
		return nil, err
	}
	if len(key) > maxKeySize {
		return nil, inputErrorf("the key file %s is larger than %d bytes", p, maxKeySize)
	}
	return key, nil
}

// keyTransport fetches signing keys (a test guards its dialing).
var keyTransport http.RoundTripper = http.DefaultTransport

// checkKeyURL accepts https:// anywhere and plain http:// only on a
// loopback host (where the offline repository is served), before any
// connection is made.
func checkKeyURL(u *url.URL) error {
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return inputErrorf("signing key URL %s: plain http:// is allowed for loopback hosts only (127.0.0.0/8, ::1, localhost); use https://", u.Redacted())
	}
	return inputErrorf("signing key URL %s: scheme %q is not supported (https://, http:// on loopback, file://)", u.Redacted(), u.Scheme)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isArmored(key []byte) bool {
	return bytes.Contains(key, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----"))
}

// armorKey returns key ASCII-armored (as is when it already is).
func armorKey(key []byte) []byte {
	if isArmored(key) {
		return key
	}
	var b bytes.Buffer
	b.WriteString("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n")
	enc := base64.StdEncoding.EncodeToString(key)
	for len(enc) > 64 {
		b.WriteString(enc[:64] + "\n")
		enc = enc[64:]
	}
	b.WriteString(enc + "\n")
	crc := crc24(key)
	b.WriteString("=" + base64.StdEncoding.EncodeToString([]byte{byte(crc >> 16), byte(crc >> 8), byte(crc)}) + "\n")
	b.WriteString("-----END PGP PUBLIC KEY BLOCK-----\n")
	return b.Bytes()
}

// crc24 is the OpenPGP armor checksum (RFC 4880, 6.1).
func crc24(data []byte) uint32 {
	crc := uint32(0xB704CE)
	for _, d := range data {
		crc ^= uint32(d) << 16
		for i := 0; i < 8; i++ {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864CFB
			}
		}
	}
	return crc & 0xFFFFFF
}

// inlineSignedBy formats an armored key as a deb822 multi-line field value.
func inlineSignedBy(armored []byte) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(string(armored), "\n"), "\n") {
		l = strings.TrimRight(l, "\r")
		if l == "" {
			l = "."
		}
		b.WriteString("\n " + l)
	}
	return b.String()
}

// deb822Source renders a sources.list.d entry. signedBy is either a path
// or an inline key (starting with a newline).
func deb822Source(s AptSource, signedBy string) string {
	var b strings.Builder
	b.WriteString("Types: deb\n")
	b.WriteString("URIs: " + s.URL + "\n")
	suite := s.Suite
	if suite == "" {
		suite = "/"
	}
	b.WriteString("Suites: " + suite + "\n")
	if suite != "/" && !strings.HasSuffix(suite, "/") {
		comps := s.Components
		if len(comps) == 0 {
			comps = []string{"main"}
		}
		b.WriteString("Components: " + strings.Join(comps, " ") + "\n")
	}
	if strings.HasPrefix(signedBy, "\n") {
		b.WriteString("Signed-By:" + signedBy + "\n")
	} else {
		b.WriteString("Signed-By: " + signedBy + "\n")
	}
	return b.String()
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = shq(s)
	}
	return out
}
