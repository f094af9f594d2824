package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DestinationSpec says where built images are published: always to an
// object store (s3), which keeps every revision with its manifest and
// attestations, and optionally also to an OCI registry (oci) as a KubeVirt
// containerDisk.
// +kubebuilder:validation:XValidation:rule="has(self.s3)",message="destination.s3 must be set: the object store keeps the revisions, manifests and attestations (destination.oci is published in addition)"
type DestinationSpec struct {
	// s3 publishes to an S3-compatible object store.
	// +optional
	S3 *S3Destination `json:"s3,omitempty"`

	// oci also pushes each published image to an OCI registry as a
	// KubeVirt containerDisk (the qcow2 under /disk/), for KubeVirt VMs,
	// Cluster API's KubeVirt provider and CDI DataVolumes and
	// DataImportCrons. Tags move only after the image is verified and
	// published to s3.
	// +optional
	OCI *OCIDestination `json:"oci,omitempty"`

	// signing signs the published image, its SBOM and its provenance with
	// a key the platform team holds; the signatures (FILE.sig, as cosign
	// sign-blob writes them) are published beside them. With oci, the
	// containerDisk is signed too, as cosign signs an image (the
	// sha256-DIGEST.sig tag), before any tag points at it.
	// +optional
	Signing *SigningSpec `json:"signing,omitempty"`
}

// SigningSpec names the key that signs published artifacts.
type SigningSpec struct {
	// keySecretRef names a Secret in the NodeImage's namespace holding the
	// private key as cosign keeps it: cosign.key (a key from cosign
	// generate-key-pair k8s://NAMESPACE/NAME, decrypted with cosign.password,
	// or an unencrypted PEM ECDSA or RSA key). Only those two keys reach the
	// builder; cosign.pub, which verifiers use, may sit beside them.
	// +required
	KeySecretRef corev1.LocalObjectReference `json:"keySecretRef"`
}

// OCIDestination is a repository of an OCI registry.
// +kubebuilder:validation:XValidation:rule="!(has(self.insecure) && self.insecure && has(self.caSecretRef))",message="caSecretRef cannot be combined with insecure"
type OCIDestination struct {
	// repository the containerDisk is pushed to, host[:port]/path, without
	// a tag or digest: the image is pushed by its digest, then tagged
	// REVISION-SPECDIGEST (r3-1a2b3c4d5e6f, never moved) and with tags.
	// +required
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+$`
	Repository string `json:"repository"`

	// tags are moved to each new image once it is verified and published,
	// the way CDI DataImportCrons and VMs that pull a tag expect. A build
	// that fails, or a registry that fails during the push, moves none.
	// +optional
	// +kubebuilder:default={"latest"}
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`
	Tags []string `json:"tags,omitempty"`

	// credentialsSecretRef names a Secret of type
	// kubernetes.io/dockerconfigjson in the NodeImage's namespace with
	// push access to the repository. Only its .dockerconfigjson key
	// reaches the builder. Without it the push is anonymous.
	// +optional
	CredentialsSecretRef *corev1.LocalObjectReference `json:"credentialsSecretRef,omitempty"`

	// caSecretRef names a Secret in the NodeImage's namespace whose ca.crt
	// key holds the PEM CA bundle that signs the registry's certificate (a
	// private registry), trusted in addition to the system's CAs. Only
	// that key reaches the builder.
	// +optional
	CASecretRef *corev1.LocalObjectReference `json:"caSecretRef,omitempty"`

	// insecure allows a plain-HTTP registry. Use it only for a registry on
	// a trusted network.
	// +optional
	Insecure bool `json:"insecure,omitempty"`
}

// BucketLookup selects S3 addressing.
// +kubebuilder:validation:Enum=auto;path;dns
type BucketLookup string

const (
	// BucketLookupAuto lets the client choose (virtual-host for AWS, path otherwise).
	BucketLookupAuto BucketLookup = "auto"
	// BucketLookupPath uses path-style addressing (endpoint/bucket/key).
	BucketLookupPath BucketLookup = "path"
	// BucketLookupDNS uses virtual-host addressing (bucket.endpoint/key).
	BucketLookupDNS BucketLookup = "dns"
)

// S3Destination is a bucket in an S3-compatible object store.
// +kubebuilder:validation:XValidation:rule="!(has(self.insecure) && self.insecure && has(self.caSecretRef))",message="caSecretRef cannot be combined with insecure"
type S3Destination struct {
	// endpoint of the object store, as a URL: https://host[:port] (or http://
	// with insecure: true).
	// +required
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^https?://[A-Za-z0-9.-]+(:[0-9]+)?/?$`
	Endpoint string `json:"endpoint"`

	// bucket name.
	// +required
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9][a-z0-9.-]*[a-z0-9]$`
	Bucket string `json:"bucket"`

	// prefix of every key nodeforge writes, below the NodeImage's
	// namespace: artifacts go to NAMESPACE/PREFIX/NAME/DIGEST/REVISION/, so a
	// NodeImage can only address keys of its own namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!_.*'()/-]*$`
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/')",message="prefix must not start with /"
	Prefix string `json:"prefix,omitempty"`

	// region of the bucket.
	// +optional
	// +kubebuilder:default="us-east-1"
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-z0-9-]+$`
	Region string `json:"region,omitempty"`

	// bucketLookup selects path-style or virtual-host addressing.
	// +optional
	// +kubebuilder:default=auto
	BucketLookup BucketLookup `json:"bucketLookup,omitempty"`

	// credentialsSecretRef names a Secret in the NodeImage's namespace with
	// keys accessKeyID and secretAccessKey, and optionally sessionToken.
	// +required
	CredentialsSecretRef corev1.LocalObjectReference `json:"credentialsSecretRef"`

	// caSecretRef names a Secret whose ca.crt key holds the PEM CA bundle
	// that signs the endpoint's certificate.
	// +optional
	CASecretRef *corev1.LocalObjectReference `json:"caSecretRef,omitempty"`

	// insecure allows a plain-HTTP endpoint. Use it only for a store on a
	// trusted network.
	// +optional
	Insecure bool `json:"insecure,omitempty"`

	// createBucket creates the bucket when it does not exist. Without it a
	// missing bucket fails the publish.
	// +optional
	CreateBucket bool `json:"createBucket,omitempty"`

	// presignExpiry is how long the presigned download URL recorded in
	// status stays valid (at most 7 days, S3's limit).
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('168h')",message="presignExpiry must be between 1s and 168h"
	PresignExpiry *metav1.Duration `json:"presignExpiry,omitempty"`
}

// CheckName names a verification check; see docs/spec/v1alpha1 for the list.
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`
type CheckName string

// VerificationSpec selects how a built image is verified before it is
// published. Every check implied by the image content is required by
// default; a failed required check fails the build and blocks publishing.
type VerificationSpec struct {
	// boot boots the finished image under QEMU (KVM where it can run guests,
	// else TCG) and checks the running node.
	// +optional
	// +kubebuilder:default={}
	Boot BootVerificationSpec `json:"boot,omitempty"`

	// cluster runs, in the same boot after the boot checks, `kubeadm init`
	// offline on the image and waits for a Ready single-node cluster (the
	// API server's /readyz, the node Ready, CoreDNS and a test Pod
	// Running). It applies to images with kubeadm, the kubelet and
	// kubernetes.images.controlPlane, when the boot test runs.
	// +optional
	// +kubebuilder:default={}
	Cluster ClusterVerificationSpec `json:"cluster,omitempty"`

	// optional lists checks whose failure is recorded but does not fail the
	// build.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=128
	Optional []CheckName `json:"optional,omitempty"`

	// skip lists checks that are not run at all.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=128
	Skip []CheckName `json:"skip,omitempty"`
}

// BootVerificationSpec configures the boot test.
type BootVerificationSpec struct {
	// enabled runs the boot test.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// timeout bounds the boot test, from QEMU start to the last in-guest
	// check.
	// +optional
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('2h')",message="verification.boot.timeout must be between 1m and 2h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// ClusterVerificationSpec configures the cluster checks.
type ClusterVerificationSpec struct {
	// enabled runs the cluster checks where they apply.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// timeout bounds the cluster checks, from kubeadm init to the last
	// one, on top of boot.timeout. Under TCG (no usable KVM) a control
	// plane takes minutes to come up.
	// +optional
	// +kubebuilder:default="15m"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('2h')",message="verification.cluster.timeout must be between 1m and 2h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// BuilderBackend selects where a build runs.
// +kubebuilder:validation:Enum=Pod;KubeVirt
type BuilderBackend string

const (
	// BuilderBackendPod runs the build in a privileged Pod with /dev/kvm.
	BuilderBackendPod BuilderBackend = "Pod"
	// BuilderBackendKubeVirt runs the build in a KubeVirt
	// VirtualMachineInstance.
	BuilderBackendKubeVirt BuilderBackend = "KubeVirt"
)

// BuilderSpec configures where and how builds run. It does not affect the
// image's content.
type BuilderSpec struct {
	// backend runs the build in a Pod or a KubeVirt VM.
	// +optional
	// +kubebuilder:default=Pod
	Backend BuilderBackend `json:"backend,omitempty"`

	// image overrides the builder container image the manager was configured
	// with.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// nodeSelector constrains the builder to nodes with these labels. Only
	// the label keys the manager allows (--allowed-node-selector-keys; none
	// by default) may be used: builders are privileged, so their placement
	// is the platform admin's choice.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// tolerations of the builder, each within those the manager allows
	// (--allowed-builder-tolerations; none by default).
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// resources of the builder container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// timeout bounds one build attempt, including time spent Pending.
	// +optional
	// +kubebuilder:default="45m"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="builder.timeout must be between 1s and 24h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// retries is how many times a failed build attempt is retried (with
	// backoff) before the build is Stalled.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	Retries *int32 `json:"retries,omitempty"`

	// cache names a PersistentVolumeClaim that keeps downloaded packages
	// and the cached base layers (about 500 MiB each, the three most
	// recently used) between builds: a build whose Debian base is
	// unchanged then installs only the Kubernetes packages and
	// spec.packages on top of it.
	// +optional
	Cache *corev1.LocalObjectReference `json:"cache,omitempty"`

	// registryCredentials names a Secret of type
	// kubernetes.io/dockerconfigjson in the NodeImage's namespace that the
	// builder pulls kubernetes.images with. Only its .dockerconfigjson key
	// reaches the builder, never the image, the logs or the status. The
	// CLI (nodeforge build) uses the Docker configuration of the user
	// running it instead.
	// +optional
	RegistryCredentials *corev1.LocalObjectReference `json:"registryCredentials,omitempty"`
}
