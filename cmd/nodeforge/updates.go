package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

type updatesOptions struct {
	file     string
	manifest string
	cacheDir string
	workDir  string
	output   string
	exitCode bool
}

// exitUpdates is the exit code of `nodeforge updates --exit-code` when a
// build now would install newer packages.
const exitUpdates = 2

func newUpdatesCmd() *cobra.Command {
	o := &updatesOptions{}
	cmd := &cobra.Command{
		Use:   "updates -f FILE --manifest MANIFEST",
		Short: "Tell whether a build of a NodeImage now would install newer packages than a built image",
		Long: `updates compares every package installed in a built image (its manifest:
NAME.json next to the image, or manifest.json from object storage, by path
or http(s) URL) with the version a build of the NodeImage in FILE would
install now. It runs the build's resolve step alone, with the same mirror,
repositories, signing keys and package cache: apt-get update in a
throwaway chroot and apt-cache madison for every installed package. Nothing
is installed; it takes seconds. A package the spec pins (a version in
spec.packages, the Kubernetes packages) is compared with its pin, any other
with the newest version its repositories offer.

It lists the packages with newer versions and those no repository offers
any more. With --exit-code it exits 2 when there are newer versions, for a
scheduled job or CI to start a rebuild; -o json adds a digest of the new
versions (the same updates, the same digest).

Runs as root (mmdebstrap in root mode), like build.`,
		Example: `  nodeforge updates -f config/samples/image_v1alpha1_nodeimage_cloudbase.yaml --manifest out/cloud-base.json
  nodeforge updates -f image.yaml --manifest "$MANIFEST_URL" -o json --exit-code`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUpdates(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.file, "file", "f", "", "NodeImage YAML file the image was built from (required)")
	f.StringVar(&o.manifest, "manifest", "", "the built image's manifest: a path or an http(s) URL (required)")
	f.StringVar(&o.cacheDir, "cache-dir", defaultCacheDir(), "package cache shared with builds (its package lists make the check fast)")
	f.StringVar(&o.workDir, "work-dir", os.TempDir(), "directory for temporary files")
	f.StringVarP(&o.output, "output", "o", "text", "text or json")
	f.BoolVar(&o.exitCode, "exit-code", false, "exit 2 when a build now would install newer packages")
	_ = cmd.MarkFlagRequired("file")
	_ = cmd.MarkFlagRequired("manifest")
	return cmd
}

func runUpdates(ctx context.Context, o *updatesOptions, stdout io.Writer) error {
	if o.output != "text" && o.output != "json" {
		return fmt.Errorf("--output: %q is not text or json", o.output)
	}
	image, content, err := loadNodeImage(ctx, o.file)
	if err != nil {
		return err
	}
	m, err := fetchManifest(ctx, o.manifest)
	if err != nil {
		return err
	}
	u, err := builder.CheckUpdates(ctx, builder.Options{Name: image.Name, WorkDir: o.workDir, CacheDir: o.cacheDir, LocalFiles: true}, *content, m.Packages)
	if err != nil {
		return err
	}
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			*builder.Updates
			Summary string `json:"summary"`
		}{u, u.Summary()}); err != nil {
			return err
		}
	} else {
		writeUpdatesText(stdout, u)
	}
	if o.exitCode && len(u.Upgrades) > 0 {
		return exitError{code: exitUpdates}
	}
	return nil
}

func writeUpdatesText(w io.Writer, u *builder.Updates) {
	fmt.Fprintln(w, u.Summary())
	if len(u.Upgrades)+len(u.Unavailable) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PACKAGE\tARCH\tINSTALLED\tNOW")
	for _, c := range u.Upgrades {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.Architecture, c.From, c.To)
	}
	for _, c := range u.Unavailable {
		fmt.Fprintf(tw, "%s\t%s\t%s\t(not offered)\n", c.Name, c.Architecture, c.From)
	}
	_ = tw.Flush()
}

// fetchManifest reads a build manifest from a file or an http(s) URL (a
// presigned one of object storage).
func fetchManifest(ctx context.Context, src string) (*manifest.Manifest, error) {
	u, err := url.Parse(src)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return manifest.Read(src)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		// The URL's query may hold a presigned signature: name the object only.
		return nil, fmt.Errorf("fetching the manifest %s: %w", redactedURL(u), unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the manifest %s: %s", redactedURL(u), resp.Status)
	}
	m, err := manifest.Decode(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("the manifest %s: %w", redactedURL(u), err)
	}
	return m, nil
}

// redactedURL is u without its query and user info.
func redactedURL(u *url.URL) string {
	c := *u
	c.RawQuery, c.User, c.Fragment = "", nil, ""
	return c.String()
}

// unwrapURLError drops the *url.Error wrapper, whose message repeats the
// whole URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// exitError ends the command with an exit code and no message.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
