// Package storage publishes built node images to object storage.
//
// # Stores
//
// Store is the small interface the builder, the controller and the CLI use.
// It has two real implementations:
//
//   - S3 talks to any S3-compatible server (AWS S3, MinIO, Ceph RGW,
//     versitygw, Garage) through minio-go: path-style, virtual-host or
//     automatic addressing; HTTPS with the system roots plus an optional
//     CA bundle (S3Options.CACertPEM), or plain HTTP only when asked
//     (S3Options.PlainHTTP); a region; static credentials with an optional
//     session token. EnsureBucket checks the bucket and the credentials up
//     front and creates a missing bucket only with S3Options.CreateBucket.
//   - Dir keeps objects in a local directory, the CLI's default when no
//     destination is given. Writes go to a temp file that is fsynced and
//     renamed into place.
//
// # Uploads
//
// Every put is verified: afterwards a HEAD (Stat) must report the uploaded
// size and the content's sha256, stored as the user metadata
// x-amz-meta-sha256; otherwise the object is removed and the put fails with
// ErrChecksumMismatch. A single PUT sends PutOptions.SHA256 (when the caller
// computed it while writing the image) as the signed content sha256, which
// the server checks; a multipart upload always hashes the file in one
// sequential read and fails with ErrChecksumMismatch, aborting the upload
// before it is completed, when the file differs from PutOptions.SHA256.
// With PutOptions.SHA256 given, that read runs alongside the upload: each
// part is sent once the read has passed it, with the CRC32C from that same
// read, so the overlap costs no integrity (the builder's path; it makes a
// 1 GiB upload about 1.5 times faster here, see docs/benchmarks.md).
// Without it, the sum is computed first, as the object's metadata needs it.
//
// Files up to the part size (DefaultPartSize, 64 MiB) go in one PUT whose
// signed x-amz-content-sha256 makes the server check the content. Larger
// files go as a multipart upload: DefaultConcurrency parts in parallel, each
// read through its own io.SectionReader of the file (a retry rereads the
// part from disk, never from a consumed reader), each with a CRC32C the
// server checks (x-amz-checksum-crc32c), and the composite CRC32C compared
// after completion. Transient errors (network failures, 5xx, SlowDown) are
// retried per request with exponential backoff and jitter (RetryPolicy);
// anything else fails at once. On failure the multipart upload is aborted,
// so no partial object is ever visible; when even the abort cannot reach the
// server (it is down), the invisible parts stay until
// S3.AbortIncompleteUploads or the server's own expiry removes them.
// PutOptions.Progress receives bytes sent and the total.
//
// # Errors
//
// Errors wrap one of ErrNotFound, ErrBucketNotFound, ErrAccessDenied (wrong
// or insufficient credentials), ErrUnavailable (server unreachable after
// retries), ErrChecksumMismatch, ErrInvalidArgument and ErrExists (a
// conditional put found an object), for errors.Is. Their
// text names the operation, bucket and key, and never contains credentials.
//
// # Credentials
//
// Credentials redact their values in every textual form (fmt, slog, JSON).
// CredentialsFromEnv reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// AWS_SESSION_TOKEN. CredentialsFromSecretData reads a Kubernetes Secret
// with the keys
//
//	accessKeyID       (or AWS_ACCESS_KEY_ID)      required
//	secretAccessKey   (or AWS_SECRET_ACCESS_KEY)  required
//	sessionToken      (or AWS_SESSION_TOKEN)      optional
//
// # Artifact layout
//
// A Publisher writes, under its prefix, content-addressed and numbered
// keys. For a NodeImage's destination (OpenDestination) the prefix is
// NAMESPACE/PREFIX, so tenants sharing a bucket cannot reach each other's
// keys:
//
//	PREFIX/NAME/SPECDIGEST/REV/NAME.qcow2.sha256   "HEX  NAME.qcow2" for sha256sum -c
//	PREFIX/NAME/SPECDIGEST/REV/NAME.qcow2          image (or NAME.raw), x-amz-meta-sha256
//	PREFIX/NAME/SPECDIGEST/REV/NAME.spdx.json      companions (PublishInput.Companions): SBOM,
//	PREFIX/NAME/SPECDIGEST/REV/NAME.provenance.json   provenance
//	PREFIX/NAME/SPECDIGEST/REV/manifest.json       the build manifest, as given
//	PREFIX/NAME/latest                             JSON Pointer to the newest revision
//
// in that order. REV numbers every publish of NAME (1, 2, 3, ...) and is
// claimed by putting the .sha256 only if absent (PutOptions.IfAbsent), so
// publishes are append-only: a rebuild of the same spec is a new revision,
// and no published object is ever written again. The manifest's presence
// marks a revision as published, and the latest pointer moves only after
// the image and manifest are verified, never back to a lower revision.
// Lookup finds the newest published revision of a digest so that a build
// of the same spec is skipped; Prune keeps the newest N published
// revisions and never the one latest names, and removes unpublished
// leftovers once stale; DeleteAll implements the Delete deletion policy. A
// failed publish never touches older revisions or the pointer, and removes
// what it wrote of its own. Keys of the layout from before revisions
// (SPECDIGEST/NAME.qcow2) read as revision 0.
//
// # CLI
//
// `nodeforge publish IMAGE --manifest F --to s3://BUCKET/PREFIX
// [--create-bucket]` maps onto OpenS3URL, which parses the URL (ParseS3URL)
// and reads the endpoint and credentials from AWS_ENDPOINT_URL, AWS_REGION
// (or AWS_DEFAULT_REGION), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN, AWS_CA_BUNDLE and NODEFORGE_S3_ADDRESSING
// (S3OptionsFromEnv). An http:// AWS_ENDPOINT_URL is taken as the opt-in
// to plain HTTP. hack/s3.sh up prints those variables for a local MinIO.
//
// # Consuming an artifact
//
// Artifact.URL is the stable URL; S3.PresignGet gives a time-limited URL
// anyone can download, for example with KubeVirt CDI:
//
//	apiVersion: cdi.kubevirt.io/v1beta1
//	kind: DataVolume
//	metadata: {name: node-image}
//	spec:
//	  source:
//	    http: {url: "PRESIGNED_URL"}   # or s3: {url: STABLE_URL, secretRef: s3-creds}
//	  storage:
//	    resources: {requests: {storage: 20Gi}}
//
// The s3 source's Secret holds accessKeyId and secretKey (CDI's key names).
//
// # Tests
//
// The *_integration_test.go files run against a real MinIO started by the
// test on a free 127.0.0.1 port from the binary hack/tools.sh minio builds
// (or $NODEFORGE_MINIO). Without it they skip, or fail when
// NODEFORGE_REQUIRE_INTEGRATION=1.
package storage
