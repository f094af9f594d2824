// Package metrics holds nodeforge's Prometheus metrics, registered in
// controller-runtime's registry so that the manager's metrics endpoint
// serves them next to the controller-runtime ones.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	// BuildsStarted counts builder attempts started, by backend.
	BuildsStarted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nodeforge_builds_started_total",
		Help: "Build attempts started, by backend.",
	}, []string{"backend"})

	// BuildsSucceeded counts builds that published an image.
	BuildsSucceeded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nodeforge_builds_succeeded_total",
		Help: "Builds that built, verified and published an image.",
	})

	// BuildsFailed counts failed attempts, by reason (BuildFailed,
	// VerificationFailed, PublishFailed, DeadlineExceeded, Interrupted) and
	// whether the build was final (no retries left).
	BuildsFailed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nodeforge_builds_failed_total",
		Help: "Failed build attempts, by reason and whether they were final.",
	}, []string{"reason", "final"})

	// BuildDuration observes how long builds took, by the step they ended in
	// ("complete" for a successful build).
	BuildDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "nodeforge_build_duration_seconds",
		Help:    "Build attempt duration from creation of the builder to its end, by the last step.",
		Buckets: []float64{30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400},
	}, []string{"step"})

	// ArtifactSize observes published image sizes.
	ArtifactSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nodeforge_artifact_size_bytes",
		Help:    "Size of published images.",
		Buckets: prometheus.ExponentialBuckets(64<<20, 2, 10),
	})

	// QueueDepth is the number of builds waiting for a build slot.
	QueueDepth = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nodeforge_build_queue_depth",
		Help: "Builds waiting for a free slot (--max-concurrent-builds).",
	})

	// CacheHits counts NodeImages whose spec digest was already published,
	// so no build ran.
	CacheHits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nodeforge_artifact_cache_hits_total",
		Help: "NodeImage specs served from an already published artifact.",
	})
)

func init() {
	crmetrics.Registry.MustRegister(BuildsStarted, BuildsSucceeded, BuildsFailed, BuildDuration, ArtifactSize, QueueDepth, CacheHits)
}
