package attest

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	slsa "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nodeforge/nodeforge/internal/manifest"
)

// Provenance predicate and build types.
const (
	PredicateSLSAProvenance = "https://slsa.dev/provenance/v1"
	BuildType               = "https://nodeforge.dev/NodeImageBuild/v1"
	// BuilderID names nodeforge's builder; its version goes to
	// runDetails.builder.version.
	BuilderID = "https://nodeforge.dev/builder"
)

// Run describes the build run beyond what the manifest holds.
type Run struct {
	// InvocationID identifies the run (the NodeImageBuild's namespace/name
	// in a cluster); empty for a local build.
	InvocationID string
	// StartedOn and FinishedOn bound the build; zero when unknown.
	StartedOn, FinishedOn time.Time
}

// Provenance returns the in-toto Statement v1 with a SLSA v1 provenance
// predicate for the image m describes, as JSON.
func Provenance(m *manifest.Manifest, builderVersion string, run Run) ([]byte, error) {
	if m.Image.SHA256 == "" || m.Image.File == "" {
		return nil, fmt.Errorf("provenance: the manifest names no image or no sha256")
	}
	content, err := toStruct(m.Content)
	if err != nil {
		return nil, fmt.Errorf("provenance: content: %w", err)
	}
	external, err := structpb.NewStruct(map[string]any{
		"name":       m.Name,
		"specDigest": m.SpecDigest,
		"content":    content.AsMap(),
	})
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	internal, err := structpb.NewStruct(map[string]any{"schemaVersion": m.SchemaVersion, "baseLayer": m.Base.Layer})
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	var deps []*intoto.ResourceDescriptor
	if m.Base.Mirror != "" {
		a, err := structpb.NewStruct(map[string]any{"distribution": m.Base.Distribution, "release": m.Base.Release, "suites": anySlice(m.Base.Suites)})
		if err != nil {
			return nil, fmt.Errorf("provenance: mirror: %w", err)
		}
		deps = append(deps, &intoto.ResourceDescriptor{Name: "debian-mirror", Uri: redactURL(m.Base.Mirror), Annotations: a})
	}
	if k := m.Content.Kubernetes; k != nil && k.AptRepository.URL != "" {
		a, err := structpb.NewStruct(map[string]any{"version": k.Version})
		if err != nil {
			return nil, fmt.Errorf("provenance: kubernetes repository: %w", err)
		}
		deps = append(deps, &intoto.ResourceDescriptor{Name: "kubernetes-apt-repository", Uri: redactURL(k.AptRepository.URL), Annotations: a})
	}
	for _, img := range m.Images {
		hex, ok := strings.CutPrefix(img.Digest, "sha256:")
		if !ok {
			return nil, fmt.Errorf("provenance: image %s: digest %q is not sha256", img.Name, img.Digest)
		}
		src := img.Source
		if src == "" {
			src = img.Name
		}
		deps = append(deps, &intoto.ResourceDescriptor{Name: img.Name, Uri: "oci://" + redactURL(src), Digest: map[string]string{"sha256": hex}})
	}
	meta := &slsa.BuildMetadata{InvocationId: run.InvocationID}
	if !run.StartedOn.IsZero() {
		meta.StartedOn = timestamppb.New(run.StartedOn)
	}
	if !run.FinishedOn.IsZero() {
		meta.FinishedOn = timestamppb.New(run.FinishedOn)
	}
	pred := &slsa.Provenance{
		BuildDefinition: &slsa.BuildDefinition{
			BuildType: BuildType, ExternalParameters: external, InternalParameters: internal, ResolvedDependencies: deps,
		},
		RunDetails: &slsa.RunDetails{
			Builder:  &slsa.Builder{Id: BuilderID, Version: map[string]string{"nodeforge": builderVersion}},
			Metadata: meta,
		},
	}
	if err := pred.Validate(); err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	predStruct, err := toStruct(pred)
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	st := &intoto.Statement{
		Type:          intoto.StatementTypeUri,
		Subject:       []*intoto.ResourceDescriptor{{Name: m.Image.File, Digest: map[string]string{"sha256": m.Image.SHA256}}},
		PredicateType: PredicateSLSAProvenance,
		Predicate:     predStruct,
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	return b, nil
}

// toStruct converts v to a protobuf Struct through its JSON form (protojson
// for protobuf messages, so field names are their JSON names).
func toStruct(v any) (*structpb.Struct, error) {
	var b []byte
	var err error
	if pm, ok := v.(proto.Message); ok {
		b, err = protojson.Marshal(pm)
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		return nil, err
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(b, s); err != nil {
		return nil, err
	}
	return s, nil
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// redactURL drops a URL's user information (user:password@), so that
// credentials written into a repository URL never reach an attestation.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = nil
	return u.String()
}
