// Command kvmprobe is the e2e test image that proves a Pod can use the KVM
// device the way nodeforge's builder does: it opens /dev/kvm read-write, asks
// for the KVM API version and reports the outcome through the container's
// termination message (/dev/termination-log), exiting 0 only on success.
//
// It is packed into an image by hack/local-cluster/go-image.sh.
package main

import (
	"fmt"
	"os"
	"syscall"
)

// kvmGetAPIVersion is KVM_GET_API_VERSION, _IO(KVMIO, 0x00) with KVMIO 0xAE.
const kvmGetAPIVersion = 0xAE00

// kvmAPIVersion is the only KVM API version Linux has ever reported.
const kvmAPIVersion = 12

func main() {
	dev := "/dev/kvm"
	if len(os.Args) > 1 {
		dev = os.Args[1]
	}
	msg, err := probe(dev)
	if err != nil {
		msg = "error: " + err.Error()
	}
	report(msg)
	if err != nil {
		os.Exit(1)
	}
}

func probe(dev string) (string, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return "", fmt.Errorf("KVM_GET_API_VERSION on %s: %w", dev, errno)
	}
	if v != kvmAPIVersion {
		return "", fmt.Errorf("%s reports KVM API version %d, want %d", dev, v, kvmAPIVersion)
	}
	return fmt.Sprintf("ok: opened %s, KVM API version %d", dev, v), nil
}

// report writes msg to stdout and, when running in a Pod, to the
// termination message file the kubelet mounts and copies into the container
// status. Outside a Pod that file does not exist and is not created.
func report(msg string) {
	fmt.Println(msg)
	f, err := os.OpenFile("/dev/termination-log", os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.WriteString(msg); err != nil {
		fmt.Fprintln(os.Stderr, "writing termination message:", err)
	}
}
